"""Neutral links for discreet readers: `{base_url}/j/{token}`, answered by `funnel serve` with a 303.

A discreet reader gets plain text, so every link prints in full, and a path such as
`/webinar/relationship-911/join` tells whoever glances at her screen what the email is
about. In her emails each link the practice itself wrote (config or templates) becomes
`{base_url}/j/{token}`, the token a short HMAC of the target URL: no open redirect
(only known targets have a token), stable when links are reordered, and on one line of
plain text. The key is derived from the unsubscribe secret with its own salt; why it is
shaped so is in docs/architecture.md.
"""

from __future__ import annotations

import base64
import hmac
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from markdown_it import MarkdownIt

from funnel.config import Config

#: the HMAC key of a jump token is derived from the secret key with this (a key used for nothing else)
_SALT = b"funnel-jump-v1"
_VERSION = b"J"
_MAC_BYTES = 12
#: a token's length in characters: base64url of 13 bytes, without padding
TOKEN_LENGTH = 18
#: the key links are signed with when no key is given: `funnel check` and the sample preview (examples only)
SAMPLE_KEY = "sample-key"

#: a URL written out in a template or in running text
_URL = re.compile(r"https?://[^\s<>()\[\]{}\"'`|\\^]+")
#: characters that end a sentence rather than a URL
_TRAILING = ".,;:!?*_~"
_MARKDOWN = MarkdownIt("commonmark")


def _previous_keys() -> list[str]:
    """FUNNEL_SECRET_KEY_PREVIOUS, as unsubscribe links read it (imported late: the renderer needs no database)."""
    from funnel.mail.unsubscribe import previous_keys

    return previous_keys()


def jump_url(base_url: str, token: str) -> str:
    return f"{base_url.rstrip('/')}/j/{token}"


def _mac_key(key: str) -> bytes:
    return hmac.digest(key.encode("utf-8"), _SALT, "sha256")


def _token(mac_key: bytes, target: str) -> str:
    mac = hmac.digest(mac_key, target.encode("utf-8"), "sha256")[:_MAC_BYTES]
    return base64.urlsafe_b64encode(_VERSION + mac).rstrip(b"=").decode("ascii")


def _trimmed(url: str) -> str:
    return url.rstrip(_TRAILING)


def template_urls(folder: Path) -> list[str]:
    """Every http(s) URL written literally in the templates under `folder` (outside `{{ }}`)."""
    found: list[str] = []
    if not folder.is_dir():
        return found
    for path in sorted(folder.rglob("*")):
        if path.suffix.lower() not in (".md", ".html", ".htm", ".txt") or not path.is_file():
            continue
        try:
            source = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        found.extend(_trimmed(match.group(0)) for match in _URL.finditer(source))
    return found


def known_targets(config: Config) -> tuple[str, ...]:
    """The targets a jump link may lead to: the practice's links, each webinar's join and replay URL,
    and every URL written in a template; each also as Markdown normalises it (as it prints in the text)."""
    practice = config.practice
    urls: list[str] = list(practice.links.values())
    for webinar in config.webinars.values():
        urls.extend(url for url in (webinar.join_url, webinar.replay_url) if url)
    urls.extend(template_urls(config.templates_path))
    targets: dict[str, None] = {}
    for url in urls:
        url = url.strip()
        if not url.lower().startswith(("http://", "https://")):
            continue
        targets[url] = None
        targets[_MARKDOWN.normalizeLink(url)] = None
    return tuple(targets)


class JumpLinks:
    """Signs the known targets with `key`; reads tokens made with it or with a previous key."""

    def __init__(self, key: str, targets: Iterable[str], previous: list[str] | None = None) -> None:
        older = _previous_keys() if previous is None else previous
        keys = list(dict.fromkeys([key] + [k for k in older if k != key]))
        macs = [_mac_key(k) for k in keys]
        self.targets = tuple(dict.fromkeys(targets))
        #: target -> its token under the signing key
        self._made = {target: _token(macs[0], target) for target in self.targets}
        #: token (under any key) -> target
        self._read = {_token(mac, target): target for mac in reversed(macs) for target in self.targets}
        ordered = sorted(self.targets, key=len, reverse=True)
        # a known target standing alone: not inside a longer URL (`/services` in `/services/group`), though
        # a sentence may end right after it
        self._pattern = (
            re.compile(r"(?<![\w/.:%-])(" + "|".join(re.escape(t) for t in ordered) + r")(?![\w/?#%&=~+@-]|[.,:;!]\w)")
            if ordered
            else None
        )

    def token(self, target: str) -> str | None:
        """The token of a known target, or None for any other URL."""
        return self._made.get(target)

    def target(self, token: str) -> str | None:
        """Where a token leads, or None for a forged, damaged or unknown one."""
        if len(token) != TOKEN_LENGTH:
            return None
        return self._read.get(token)

    def rewrite(self, text: str, base_url: str) -> str:
        """`text` with every known target written as its jump link (other URLs, e.g. the unsubscribe
        link, as they are)."""
        if self._pattern is None:
            return text
        return self._pattern.sub(lambda m: jump_url(base_url, self._made[m.group(1)]), text)


@lru_cache(maxsize=8)
def _cached(key: str, targets: tuple[str, ...], previous: tuple[str, ...]) -> JumpLinks:
    return JumpLinks(key, targets, list(previous))


def jump_links(config: Config, key: str | None, previous: list[str] | None = None) -> JumpLinks:
    """The JumpLinks of this config signed with `key` (None: the sample key of previews and checks)."""
    older = _previous_keys() if previous is None else previous
    return _cached(key or SAMPLE_KEY, known_targets(config), tuple(older))
