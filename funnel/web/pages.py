"""The few HTML pages: unsubscribe (confirm, done, undone) and the form's thank-you."""

from __future__ import annotations

import base64
import hashlib

from fastapi import APIRouter

router = APIRouter()

#: the only stylesheet; allowed by its hash, so the policy needs no 'unsafe-inline' and no nonce
STYLE = """
body{font:1.05rem/1.55 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#2b2b2b;background:#faf8f5;margin:0}
main{max-width:32rem;margin:12vh auto;padding:0 1.25rem}
h1{font-size:1.35rem;font-weight:600;margin:0 0 1rem}
p{margin:0 0 1rem}
.practice{color:#6b6259;font-size:.95rem;margin-bottom:2rem}
button{font:inherit;padding:.7rem 1.3rem;border-radius:.5rem;border:1px solid #5b4e8c;background:#5b4e8c;
color:#fff;cursor:pointer;min-height:44px}
button.quiet{background:transparent;color:#5b4e8c}
button:focus-visible{outline:3px solid #e0a458;outline-offset:2px}
form{margin:1.5rem 0}
""".strip()

_STYLE_HASH = base64.b64encode(hashlib.sha256(STYLE.encode("utf-8")).digest()).decode("ascii")

#: nothing loads from anywhere; forms post only back to us; no framing, no base tag tricks
CSP = (
    f"default-src 'none'; style-src 'sha256-{_STYLE_HASH}'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
