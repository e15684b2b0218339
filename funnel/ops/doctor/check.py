"""One check of `funnel doctor`, and the one HTTP GET the checks share."""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import asdict, dataclass
from typing import Any

#: seconds each HTTP request or DNS query may take
TIMEOUT = 10.0


@dataclass(frozen=True)
class Check:
    """One check: its name, whether it passed (None: not applicable here), and the sentence."""

    name: str
    ok: bool | None
    message: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def http_get(url: str, headers: dict[str, str]) -> tuple[int, bytes]:
    """(status, body) of one GET; OSError when nothing answered."""
    request = urllib.request.Request(url, headers=headers, method="GET")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT) as answer:
            return answer.status, answer.read(1_000_000)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(1_000_000)
    except ValueError as exc:  # not a URL
        raise OSError(str(exc)) from None
