"""Addresses: normalised once whatever their case, the fast path agreeing with email-validator."""

from __future__ import annotations

import string
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from funnel.text import _domain_forms, _validated, normalize_email

# --------------------------------------------------------------------------- normalize_email


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Ann@Example.TEST", "ann@example.test"),
        ("  bob@example.test  ", "bob@example.test"),
        ("\tCarla.Mendes@EXAMPLE.test\n", "carla.mendes@example.test"),
        ("dana+news@example.test", "dana+news@example.test"),
    ],
)
def test_normalize_email(raw: str, expected: str) -> None:
    assert normalize_email(raw) == expected


def test_normalize_email_same_contact_whatever_the_case() -> None:
    assert normalize_email("ANA.REYES@Example.Test") == normalize_email("ana.reyes@example.test")


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "   ",
        "not-an-email",
        "a@",
        "@example.test",
        "a b@example.test",
        "a@@example.test",
        "a@example",
    ],
)
def test_normalize_email_rejects_invalid_addresses(raw: str) -> None:
    with pytest.raises(ValueError) as info:
        normalize_email(raw)
    assert str(info.value)


def _outcome(check: Callable[[str], str], raw: str) -> tuple[str, str]:
    try:
        return "ok", check(raw)
    except ValueError as exc:
        return "refused", str(exc)


_ATEXT = string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~"
#: pieces an address is built from: plain and odd characters, dots, quotes, spaces, non-ASCII
_LOCAL = st.text(alphabet=_ATEXT + '..."@ \\()<>,;:[]\u00e9\u00fc\u00a0\u2028\t', min_size=0, max_size=70)
_LABEL = st.one_of(
    st.sampled_from(["example", "gmail", "xn--bcher-kva", "b\u00fccher", "-bad", "bad-", "a" * 63, "a" * 64, "MIX"]),
    st.text(alphabet=string.ascii_letters + string.digits + "-_\u00e9\u00df\u0301@ []", min_size=0, max_size=20),
)
_TLD = st.sampled_from(["test", "com", "org", "local", "localhost", "invalid", "arpa", "onion", "c0m", "x", "TEST", ""])
_DOMAIN = st.builds(
    lambda labels, tld: ".".join([*labels, tld]) if tld else ".".join(labels),
    st.lists(_LABEL, min_size=0, max_size=5),
    _TLD,
)
_ADDRESS = st.one_of(
    st.builds(lambda local, domain: f"{local}@{domain}", _LOCAL, _DOMAIN),
    st.builds(
        lambda local, domain, pad: f"{local}@{domain}{pad}",
        st.text(_ATEXT, min_size=1, max_size=70),
        _DOMAIN,
        st.sampled_from(["", " ", "\n"]),
    ),
    st.builds(lambda n, m: f"{'a' * n}@{'b' * m}.test", st.integers(50, 70), st.integers(150, 260)),
    st.text(max_size=40),
)


@settings(max_examples=1500, deadline=None)
@given(raw=_ADDRESS)
def test_normalize_email_fast_path_agrees_with_email_validator(raw: str) -> None:
    """The per-domain fast path accepts, refuses and normalises exactly as email-validator does."""
    assert _outcome(normalize_email, raw) == _outcome(_validated, raw.strip())


@pytest.mark.parametrize(
    "raw",
    [
        "a" * 64 + "@" + "b" * 63 + "." + "c" * 63 + "." + "d" * 63 + "." + "e" * 50 + ".test",  # too long in all
        "a..b@example.test",
        "a@example.invalid",  # a special-use domain
        "a@-bad.test",
    ],
)
def test_normalize_email_fast_path_refuses_what_email_validator_refuses(raw: str) -> None:
    _domain_forms.cache_clear()
    normalize_email("a@example.test")  # a domain already known must not let a bad address through
    assert _outcome(normalize_email, raw) == _outcome(_validated, raw)
    assert _outcome(normalize_email, raw)[0] == "refused"


def test_a_domain_too_long_to_be_valid_is_refused_and_not_remembered() -> None:
    """A hostile export's 5,000-character domains must not fill the domain cache's memory."""
    _domain_forms.cache_clear()
    for n in range(3):
        assert _outcome(normalize_email, f"a{n}@" + "b" * 5000 + ".test")[0] == "refused"
    assert _domain_forms.cache_info().currsize == 0
