"""Template errors in the words of the person who wrote the letter, with "did you mean".

Jinja says `'funnel.mail.fields.TemplateContact object' has no attribute
'frist_name'`: true, and no help to a therapist editing a letter. `explain` turns
such a message into what she wrote (`contact.frist_name`), what exists instead
(`contact.first_name`, `practice.links`, the mapped fields) and what to do. It works
at the error-reporting boundary only (`Renderer._run`, the syntax messages):
rendering itself is untouched. No message names an internal class.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import fields as dataclass_fields
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from funnel.config import Config

#: what a template can use at the top level (funnel.mail.render.Renderer._context)
TOP_LEVEL = ("contact", "practice", "webinar", "unsubscribe_url", "sequence", "step")
#: the filters funnel adds to Jinja's own
OWN_FILTERS = ("format_date", "format_time")
#: quotes a word processor or a phone puts in place of ' and "
CURLY_QUOTES = "‘’‚‛“”„‟«»′″"

_NO_ATTRIBUTE = re.compile(r"^'(?P<owner>[^']*)' has no attribute '(?P<attr>[^']+)'$")
_UNDEFINED = re.compile(r"^'(?P<name>[^']+)' is undefined$")
_NO_FILTER = re.compile(r"^[Nn]o filter named '(?P<name>[^']+)'")
_UNEXPECTED_CHAR = re.compile(r"^unexpected char '(?P<char>.)' at \d+$")
#: Jinja's names for our objects, and for Python's own
_TYPES = {
    "funnel.mail.fields.TemplateContact object": "contact",
    "funnel.mail.fields.TemplateWebinar object": "webinar",
    "funnel.config.Practice object": "practice",
}
_ANY_TYPE = re.compile(r"'(?:[\w]+\.)+\w+ object'|'\w+ object'|<[\w.]+ object at 0x[0-9a-f]+>")


def known_names(config: Config, owner: str) -> list[str]:
    """What `owner` (`contact`, `practice.links`, ...) holds, for "did you mean" and lists."""
    from funnel.config import KNOWN_FIELDS, Practice
    from funnel.mail.fields import TemplateContact, TemplateWebinar

    if owner == "contact":
        return [f.name for f in dataclass_fields(TemplateContact)]
    if owner == "webinar":
        return [f.name for f in dataclass_fields(TemplateWebinar)]
    if owner == "practice":
        return list(Practice.model_fields)
    if owner == "practice.links":
        return list(config.practice.links)
    if owner == "practice.details":
        return list(getattr(config.practice, "details", {}) or {})
    if owner == "contact.fields":
        return sorted(
            {name for source in config.sources.values() for name in source.columns if name not in KNOWN_FIELDS}
        )
    if owner in ("sequence", "step"):
        return ["id", "name"] if owner == "sequence" else ["id"]
    return []


def _suggest(wrong: str, names: list[str]) -> str | None:
    close = difflib.get_close_matches(wrong, names, n=1, cutoff=0.6)
    return close[0] if close else None


def _path_ending(line: str, attr: str) -> str | None:
    """The dotted name in `line` that ends with `.attr` (`practice.links.webinar`), or None."""
    match = re.search(r"\b((?:[A-Za-z_]\w*\.)+)" + re.escape(attr) + r"\b", line)
    return match.group(1).rstrip(".") if match else None


def explain(message: str, config: Config, line: str = "") -> str | None:
    """A message and what to do for a Jinja error `message` (from the template `line`); None: no better words."""
    text = message.strip()
    if found := _NO_ATTRIBUTE.match(text):
        return _no_attribute(found["owner"], found["attr"], config, line)
    if found := _UNDEFINED.match(text):
        return _undefined(found["name"], config)
    return explain_syntax(text)


def explain_syntax(message: str) -> str | None:
    """Better words for a syntax error (an unknown filter, a curly quote); None: no better words."""
    text = message.strip()
    if found := _NO_FILTER.match(text):
        return _no_filter(found["name"])
    if (found := _UNEXPECTED_CHAR.match(text)) and found["char"] in CURLY_QUOTES:
        return (
            f"a curly quote {found['char']} inside {{{{ }}}} or {{% %}}: use straight quotes ' or \" "
            "(a word processor or phone may have changed them)"
        )
    return None


def plain(message: str) -> str:
    """`message` without Python's names for things (`'funnel.mail.render.X object'`, `'dict object'`)."""
    for python, ours in _TYPES.items():
        message = message.replace(f"'{python}'", ours)
    return _ANY_TYPE.sub("this value", message)


def _no_attribute(owner_type: str, attr: str, config: Config, line: str) -> str:
    owner = _path_ending(line, attr) or _TYPES.get(owner_type)
    if owner_type == "None" and (owner or "").startswith("webinar"):
        return (
            f"webinar.{attr}: the people of this sequence have no webinar: use webinar only in a sequence "
            "a webinar's source enrolls into, or guard it with {% if webinar %}"
        )
    if owner is None:
        return f"{attr!r} is not there: check the name, or guard it with {{% if ... is defined %}}"
    names = known_names(config, owner)
    wrote = f"{owner}.{attr}"
    guess = _suggest(attr, names)
    if owner == "contact.fields":
        mapped = ", ".join(names) or "none"
        fix = f"did you mean contact.fields.{guess}? " if guess else ""
        return (
            f"{wrote}: no source maps a field {attr!r} (the mapped fields: {mapped}): {fix}"
            f"map it in a source's columns (e.g. {attr}: Column Header), or remove it"
        )
    if owner == "practice.links":
        listed = ", ".join(names) or "none yet"
        fix = f"did you mean practice.links.{guess}? " if guess else ""
        return (
            f"{wrote}: there is no link named {attr!r} under practice.links (the links: {listed}): "
            f"{fix}add it there in {config.path.name}"
        )
    if owner == "practice.details":
        listed = ", ".join(names) or "none yet"
        fix = f"did you mean practice.details.{guess}? " if guess else ""
        return (
            f"{wrote}: practice.details has no {attr!r} (the details: {listed}): "
            f"{fix}add it there in {config.path.name}"
        )
    if guess:
        return f"{wrote} does not exist: did you mean {owner}.{guess}?"
    has = f" ({owner} has {', '.join(names)})" if names else ""
    extra = "; a source's other columns are contact.fields.NAME" if owner == "contact" else ""
    return f"{wrote} does not exist{has}{extra}: define it, or guard it with {{% if ... is defined %}}"


def _undefined(name: str, config: Config) -> str:
    for owner in ("contact", "practice", "webinar", "contact.fields"):
        if name in known_names(config, owner):
            return f"{name!r} is undefined on its own: did you mean {owner}.{name}?"
    guess = _suggest(name, list(TOP_LEVEL))
    if guess:
        return f"{name!r} is undefined: did you mean {guess}?"
    return (
        f"{name!r} is undefined (the letters can use {', '.join(TOP_LEVEL)}): "
        "define it, or guard it with {% if ... is defined %}"
    )


def _no_filter(name: str) -> str:
    from jinja2.filters import FILTERS

    guess = _suggest(name, [*OWN_FILTERS, *FILTERS])
    fix = f"did you mean {guess}?" if guess else f"funnel's own are {', '.join(OWN_FILTERS)}"
    return f"there is no filter {name!r}: {fix}"
