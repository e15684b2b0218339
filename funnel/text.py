"""Addresses and text: normalise and hash an address, match column titles, clean lines.

Every way a person comes in (a file, a form, a webhook, a reply) and every
place a name or a header is written uses these, so that an address is one
person whatever its case, a title matches however it was typed, and no
control character or line break reaches a header or a log line. Pure
functions, no I/O: they live apart from the file reader so that sending,
events and replies do not depend on it.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from functools import lru_cache

#: control characters (C0, DEL, C1), line/paragraph separators, bidi overrides and BOM
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")
_CONTROL_KEEP_LINES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\ufeff]")
_SPACES = re.compile(r"\s+")
_BREAKS = re.compile(r"\r\n|[\r\x85\u2028\u2029]")
#: typographic quotes, matched in titles as the straight ones people type
_QUOTES = str.maketrans(
    {
        "\u2018": "'",
        "\u2019": "'",
        "\u201a": "'",
        "\u201b": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u201e": '"',
        "\u201f": '"',
    }
)


def normalize_email(value: str) -> str:
    """Validate and normalise an address; one contact per address whatever its case.

    Only addresses every provider can deliver are accepted: ASCII before the
    @ (SendGrid and most mail servers do not speak SMTPUTF8); an international
    domain is returned as punycode, the form mail headers carry. Raises
    ValueError with a short reason. `.test` domains are allowed (the shipped
    examples use them; they can never be delivered by accident).
    """
    text = value.strip()
    # the fast path: a plain address on a domain already checked; it accepts exactly
    # what email-validator accepts (tests/test_sources.py compares them on generated addresses)
    local, _, domain = text.partition("@")
    # (a domain of at most 255 characters: no longer can be valid, nor fill the cache's memory)
    if len(local) <= 64 and len(domain) <= 255 and _PLAIN_LOCAL.match(local):
        known = _domain_forms(domain)
        if known is not None:
            ascii_domain, longest_domain = known
            # the lengths email-validator checks (RFC 5321): the address as given, and both its forms
            given = len(text) if text.isascii() else len(text.encode())
            if given <= 254 and len(local) + 1 + longest_domain <= 254:
                return f"{local}@{ascii_domain}".lower()
    return _validated(text)


#: a dot-atom local part of ASCII letters and symbols (what nearly every list holds), at most 64 long;
#: anything else (quotes, non-ASCII, odd lengths) takes the full check
_PLAIN_LOCAL = re.compile(r"[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]+(?:\.[a-zA-Z0-9_!#$%&'*+\-/=?^`{|}~]+)*\Z")
_PLAIN_DOMAIN = re.compile(r'[^\s@<>"()\[\],;:\\]{1,255}\Z')


def _validated(text: str) -> str:
    """The full check by email-validator: syntax only, no DNS look-up."""
    from email_validator import EmailNotValidError, validate_email  # loaded by the first run that reads a row

    try:
        result = validate_email(text, check_deliverability=False, test_environment=True, allow_smtputf8=False)
    except EmailNotValidError as exc:
        raise ValueError(str(exc).rstrip(".")) from None
    return (result.ascii_email or result.normalized).lower()


@lru_cache(maxsize=65536)
def _domain_forms(domain: str) -> tuple[str, int] | None:
    """A plain domain's ASCII (punycode) form as email-validator gives it, and the longer of its two
    forms in bytes; None if it is not plain or email-validator refuses it (the full check decides then).

    Remembered per domain: a list of 100,000 people has a few hundred domains,
    and the domain (IDNA, special-use names) is the costly part of the check.
    """
    if not _PLAIN_DOMAIN.match(domain):
        return None
    from email_validator import EmailNotValidError, validate_email

    try:
        result = validate_email(f"a@{domain}", check_deliverability=False, test_environment=True, allow_smtputf8=False)
    except EmailNotValidError:
        return None
    return result.ascii_domain, max(len(result.domain.encode()), len(result.ascii_domain))


def email_hash(normalized: str) -> str:
    return hashlib.sha256(normalized.encode("utf-8")).hexdigest()


def title_key(title: str) -> str:
    """How a column's title is matched: case, stray or doubled spaces and invisible characters aside.

    The same for sequences.yaml's `columns:` and `where:` as for a file's
    header, a JSONL key and a form field, so "First  Name" in one matches
    "first name" in another. Beyond ASCII, the Unicode form is made one
    (NFKC: "é" typed as e + accent, as macOS writes it, or a full-width "Ｅ")
    and invisible format characters (a zero-width space, a soft hyphen, a
    direction mark) are dropped: none of them can be seen in a spreadsheet.
    Quotes match either way: Typeform's "What’s your first name?" is
    "What's your first name?" as typed in sequences.yaml (’ ‘ as ', “ ” as ").
    """
    if title.isascii():
        return clean_line(title).lower()
    title = title.translate(_QUOTES)
    text = "".join(ch for ch in unicodedata.normalize("NFKC", title) if unicodedata.category(ch) != "Cf")
    return clean_line(text).casefold()


def clean_line(value: str | None) -> str:
    """One line of text for a name or a header: no control characters, single spaces."""
    if not value:
        return ""
    if value.isascii() and value.isprintable() and "  " not in value:
        return value.strip()  # the usual name: nothing to clean (the same answer, without the regexes)
    return _SPACES.sub(" ", _CONTROL.sub(" ", value)).strip()


def clean_text(value: str | None) -> str:
    """Free text (a form's message): line breaks kept as `\\n`, other control characters dropped."""
    if not value:
        return ""
    return _CONTROL_KEEP_LINES.sub("", _BREAKS.sub("\n", value)).strip()
