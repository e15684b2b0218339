"""The one settings file: `.env` beside sequences.yaml (or `FUNNEL_ENV_FILE`).

Cron, a systemd unit and a shell each had their own way of loading settings and
disagreed (systemd keeps a `# comment` after a value as part of it, a shell drops it),
so `funnel run` signed links with one key and `funnel serve` checked them with another.
Read by funnel itself, with python-dotenv's rules, every way of starting it sees the
same values; a variable set in the real environment wins over the file. The rules:
docs/decisions.md, "The settings file".
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from funnel.config import config_path
from funnel.errors import ConfigError

ENV_FILE_VARIABLE = "FUNNEL_ENV_FILE"
#: a label mixed into the key's fingerprint, so the fingerprint is no plain hash of the key used anywhere else
_FINGERPRINT_LABEL = b"funnel signing-key fingerprint v1\0"
#: `KEY=value  # note` with the value unquoted: the note is dropped by python-dotenv
_INLINE_COMMENT = re.compile(r"^\s*(?:export\s+)?[A-Za-z_][A-Za-z0-9_]*\s*=\s*[^'\"\s#][^#]*\s#")

__all__ = ["EnvFile", "applied", "env_file_path", "key_fingerprint", "loaded", "read_env_file"]


@dataclass
class EnvFile:
    """What was read: the file, its values, and which of them the real environment overrode."""

    path: Path
    exists: bool = False
    values: dict[str, str] = field(default_factory=dict)
    #: keys set in the file but already set (differently) in the real environment
    overridden: list[str] = field(default_factory=list)
    #: line numbers of `KEY=value # note` lines (the note is not part of the value)
    inline_comments: list[int] = field(default_factory=list)


#: the file the running command applied (for `funnel doctor` and `funnel serve`)
_current: EnvFile | None = None


def env_file_path(explicit_config: str | os.PathLike[str] | None = None) -> Path:
    """FUNNEL_ENV_FILE, else `.env` in the folder of the config file this command uses."""
    chosen = os.environ.get(ENV_FILE_VARIABLE, "").strip()
    if chosen:
        return Path(chosen).expanduser().resolve()
    return config_path(explicit_config).parent / ".env"


def read_env_file(path: Path) -> EnvFile:
    """The file's values (nothing applied); ConfigError when it exists but cannot be read."""
    from dotenv import dotenv_values

    found = EnvFile(path)
    if not path.exists():
        return found
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"{path}: cannot be read ({reason}): make it readable by the user funnel runs as "
            f"(chmod 600, owned by that user), or point {ENV_FILE_VARIABLE} at the right file"
        ) from None
    import io

    found.exists = True
    found.values = {k: v for k, v in dotenv_values(stream=io.StringIO(text)).items() if v is not None}
    found.inline_comments = [n for n, line in enumerate(text.splitlines(), 1) if _INLINE_COMMENT.match(line)]
    return found


def loaded() -> EnvFile | None:
    """The env file the running command applied, if any."""
    return _current


@contextmanager
def applied(explicit_config: str | os.PathLike[str] | None = None) -> Iterator[EnvFile]:
    """Apply the env file for one command; the variables it added are removed afterwards.

    Loaded once: a nested call (a command calling another in-process) reuses
    what the outer one applied. Removing afterwards keeps a process that runs
    several commands (tests, a scheduler calling the CLI) from carrying one
    folder's settings into the next.
    """
    global _current
    if _current is not None:
        yield _current
        return
    found = read_env_file(env_file_path(explicit_config))
    added: list[str] = []
    for key, value in found.values.items():
        if key in os.environ:
            if os.environ[key] != value:
                found.overridden.append(key)
            continue
        os.environ[key] = value
        added.append(key)
    _current = found
    try:
        yield found
    finally:
        _current = None
        for key in added:
            os.environ.pop(key, None)


def key_fingerprint(key: str | None) -> str:
    """12 hex digits that tell two signing keys apart without revealing either ("none" without a key)."""
    if not key:
        return "none"
    return hashlib.sha256(_FINGERPRINT_LABEL + key.encode()).hexdigest()[:12]
