"""Templates: Markdown + Jinja2 (or .html) inside the layout, CSS inlined, plus a text part.

One `Renderer` is built per run and compiles every template and subject up
front, so a problem surfaces before anything is sent. Undefined variables are
errors (StrictUndefined), never blank text in a sent email; so is printing an
empty value (`None`: a contact without a first name or a message), which
`funnel check` finds by rendering for a contact with every optional field
empty. A webinar start the contact does not have is not an error of the
template: `MissingData` says the email cannot be written for this person,
and the run skips it with that reason.

Templates run in Jinja's SandboxedEnvironment: a template is data a person
edits, and must not reach Python internals (`cycler.__init__.__globals__.os
.environ` would otherwise print the SendGrid key into an email).

Compile once, fill per person. What is expensive (parsing Markdown, turning
it into HTML and text, inlining the layout's CSS) does not depend on the
recipient, so it is done once per *shape* of an email and cached:

1. Jinja runs per email (cheap), but every value that belongs to the
   recipient (`_Personal`: her name, fields, address, unsubscribe link,
   subject) is printed as an opaque slot token (`fnl<nonce><n>z`) and
   remembered. The output with tokens is the shape; people who take the same
   `{% if %}` branches share it.
2. A new shape is parsed and rendered once (Markdown to HTML and text, the
   layout wrapped around it, CSS inlined) and cached.
3. Per email, the tokens are replaced by the recipient's values, escaped for
   HTML (`& < > " '`), raw in the text part. A value can never become
   markup, a link or Markdown: it is never parsed at all.

Even the Jinja runs are mostly skipped: a template whose syntax tree shows
that it only prints the recipient's values or tests them for truth (`_Plan`)
gives the same output with tokens to every reader with the same key (which of
her values are there, the zone of her webinar start, discreet or not), so
that output is remembered and only her values are appended to the slots.
Subjects, preheaders and layout.txt take part too (their tokens filled with
the raw values); a template that does anything else with a value is rendered
every time, as before.

Values in link targets are normalised and checked exactly as markdown-it
would (a `javascript:` link from a contact field is never made a link); a
shape the token trick cannot represent faithfully (an autolink `<{{ url }}>`)
and any value in a link target that is not a plain safe URL take the direct
path: Jinja writes Markdown in which every value is backslash-escaped and
markdown-it parses it, as before. Values that are not the recipient's own
(practice details, a formatted webinar date) are printed into the shape,
backslash-escaped, so they are safe as well.
"""

from __future__ import annotations

import re
import secrets
import threading
import traceback
from bisect import bisect_right
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field, fields, replace
from datetime import datetime
from functools import lru_cache
from pathlib import Path
from types import CodeType
from typing import Any, cast

import css_inline
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateRuntimeError,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
    meta,
    nodes,
)
from jinja2 import (
    TemplateError as JinjaTemplateError,
)
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup, escape

from funnel.config import KNOWN_FIELDS, Config, Sequence, Step
from funnel.errors import TemplateError
from funnel.jump import jump_links
from funnel.template_hints import explain, explain_syntax, plain

#: Markdown syntax a reader's value may hold, backslash-escaped when it is printed into a Markdown
#: template: `&` (an entity such as `&copy;` would show as ©), `=` (a line of them under a line
#: makes a heading) and quotes (they end a link's title) too
_MD_PUNCT = re.compile(r"([\\`*_{}\[\]()#+\-.!<>|~&=\"';])")
_MD_UNESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!<>|~&=\"';])")


class EmptyValueError(TemplateRuntimeError):
    """A template printed an empty value (None): it would leave a blank in someone's email."""


class MissingData(TemplateError):
    """The email cannot be written for this person (no webinar start): skip it with `reason`."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


#: the reason a step is skipped for someone without a webinar start
NO_WEBINAR_START = "no webinar date"


class _NoWebinarStart(StrictUndefined):
    """`webinar.start` of a contact without one: any use of it raises MissingData."""

    __slots__ = ()

    def _fail_with_undefined_error(self, *args: Any, **kwargs: Any) -> Any:
        raise MissingData(NO_WEBINAR_START)

    # StrictUndefined routes these through the method above, except formatting
    def __format__(self, spec: str) -> str:
        raise MissingData(NO_WEBINAR_START)


class _Empty(Undefined):
    """A contact value that is blank for this person (`contact.first_name`, a mapped field).

    False in `{% if %}` and `or`, so `{{ contact.first_name or 'there' }}` works;
    printing it bare is an error naming it, never a blank in an email.
    """

    __slots__ = ()

    def __str__(self) -> str:
        raise EmptyValueError(f"{self._undefined_name} is empty for some people")

    def __format__(self, spec: str) -> str:
        return str(self)


def _blank(name: str) -> Any:
    return _Empty(name=name)


def refuse_empty(value: Any) -> Any:
    """`finalize` for every environment: printing None is an error, never a blank."""
    if value is None:
        raise EmptyValueError("this prints an empty value (None)")
    return value


def markdown_escape(value: Any) -> Any:
    """Backslash-escape Markdown syntax in a value printed into a Markdown template."""
    refuse_empty(value)
    if isinstance(value, Markup):
        return value
    return _MD_PUNCT.sub(r"\\\1", str(value))


#: `{% raw %}...{% endraw %}`: literal text, never a value
_JINJA_RAW = re.compile(r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}", re.DOTALL)
_JINJA_COMMENT = re.compile(r"\{#.*?#\}", re.DOTALL)
_JINJA_STATEMENT = re.compile(r"\{%.*?%\}", re.DOTALL)
_JINJA_VALUE = re.compile(r"\{\{.*?\}\}", re.DOTALL)
#: an HTML comment that is only a comment (an Outlook `<!--[if mso]>` one holds markup Outlook reads,
#: and `<!--[if !mso]><!-->` ends at once: what follows is for every other client)
_HTML_COMMENT = re.compile(r"<!--(?!\[if|>).*?-->", re.DOTALL)
#: a tag in a template's source once Jinja is neutralised, attribute values in double or single quotes
_SOURCE_TAG = re.compile(r"""<[A-Za-z][^>"']*(?:(?:"[^"]*"|'[^']*')[^>"']*)*>""")
_QUOTED = re.compile(r""""[^"]*"|'[^']*'""")
_VALUE_MARK = "{{v}}"


def _keep_lines(text: str, fill: str = " ") -> str:
    """`text` with every character but line breaks replaced by `fill` (offsets and lines stay)."""
    return re.sub(r"[^\n]", fill, text)


def _neutralised(source: str) -> str:
    """A template's source as HTML sees it around the values, offsets kept: raw blocks and
    comments blank, each statement a run of letters (so `<{% if x %}p{% endif %}` still starts a
    tag), each printed value `{{v}}` padded (its own quotes and `>` hidden)."""
    source = _JINJA_RAW.sub(lambda m: _keep_lines(m.group(0)), source)
    source = _JINJA_COMMENT.sub(lambda m: _keep_lines(m.group(0)), source)
    source = _JINJA_STATEMENT.sub(lambda m: _keep_lines(m.group(0), "x"), source)
    return _JINJA_VALUE.sub(lambda m: _VALUE_MARK + _keep_lines(m.group(0)[len(_VALUE_MARK) :]), source)


def unquoted_value(source: str) -> int | None:
    """Where an HTML template prints a value inside a tag outside quotes, or as a tag's name (the
    offset), or None.

    Autoescaping makes a value safe inside a quoted attribute, not in a bare
    one: a person named `x onmouseover=...` would add an attribute of her own,
    and `<{{ x }}>` lets her name the tag.
    """
    html = _neutralised(source)
    html = _HTML_COMMENT.sub(lambda m: _keep_lines(m.group(0)), html)
    text = list(html)
    for tag in _SOURCE_TAG.finditer(html):
        if "{{" in _QUOTED.sub("", tag.group(0)):
            return tag.start()
        text[tag.start() : tag.end()] = _keep_lines(tag.group(0))
    found = re.search(r"<\{\{", "".join(text))  # `<` right before a value: her text names the tag
    return found.start() if found else None


#: an odd number of backslashes right before a value, with only Jinja's statements and comments
#: (blanked to NUL) between (`{{-` also eats the white space before it)
_BACKSLASH_VALUE = re.compile(r"(?<!\\)(?:\\\\)*\\\x00*(?:\{\{|\s*\{\{-)")
#: Markdown code: a fenced block, or a code span on one line
_MD_CODE = re.compile(r"(?ms)^ {0,3}(```|~~~).*?^ {0,3}\1|`[^`\n]*`")


def backslashed_value(source: str) -> int | None:
    """Where a Markdown template has a backslash right before a value (the offset), or None.

    It would undo the escaping of the value's first character. Inside code
    Markdown reads backslashes as they are, so there it is fine; Jinja's
    statements and comments in between count as nothing.
    """
    source = _JINJA_RAW.sub(lambda m: _keep_lines(m.group(0)), source)
    source = _JINJA_COMMENT.sub(lambda m: _keep_lines(m.group(0), "\x00"), source)
    source = _JINJA_STATEMENT.sub(lambda m: _keep_lines(m.group(0), "\x00"), source)
    source = _MD_CODE.sub(lambda m: _keep_lines(m.group(0)), source)
    found = _BACKSLASH_VALUE.search(source)
    return found.start() if found else None


#: a tag as html5ever writes it: attribute values always in double quotes (a `>` may be inside them)
_TAG = re.compile(r'<[^>"]*(?:"[^"]*"[^>"]*)*>')
_TAG_NAME = re.compile(r"<([A-Za-z][A-Za-z0-9]*)")
#: the last attribute opened before a point in a tag: its name
_ATTRIBUTE = re.compile(r'([^\s="]+)="[^"]*\Z')
#: elements whose text the serialiser writes as it is (not escaped)
_RAW_TEXT = frozenset({"style", "script", "xmp", "iframe", "noembed", "noframes", "noscript", "plaintext"})


def _markup_spans(html: str) -> list[tuple[int, int, str]]:
    """The (start, end, kind) of every tag ("tag") and of every comment or raw text ("raw") in
    serialised HTML, in order; what lies between them is text."""
    spans: list[tuple[int, int, str]] = []
    at, end = 0, len(html)
    while (start := html.find("<", at)) >= 0:
        if html.startswith("<!--", start):
            close = html.find("-->", start + 4)
            at = end if close < 0 else close + 3
            spans.append((start, at, "raw"))
            continue
        tag = _TAG.match(html, start)
        if tag is None:
            spans.append((start, end, "raw"))
            break
        spans.append((start, tag.end(), "tag"))
        at = tag.end()
        name = _TAG_NAME.match(html, start)
        if name is not None and name.group(1).lower() in _RAW_TEXT:
            close_tag = re.compile(rf"</{name.group(1)}(?=[\s/>])", re.IGNORECASE).search(html, at)
            stop = close_tag.start() if close_tag else end
            spans.append((at, stop, "raw"))
            at = stop
    return spans


class _Personal(str):
    """A value of the recipient's own: printed as a slot token while a shape is compiled."""

    __slots__ = ()


#: line breaks of every kind `str.splitlines` knows, and the control characters besides them and tab
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x1f\x7f\ud800-\udfff]")


def _one_line(text: str) -> str:
    """A reader's value as an email shows it: line breaks as one space, control characters (and
    lone surrogates, which no email can carry) dropped, no white space at either end.

    A value is printed into running text (a greeting, a sentence), never as a
    block of its own: a message typed on a form with blank lines, `===` on a
    line, a name ending in two spaces (a Markdown line break) or starting with
    a tab (a code block), or a stray NUL from an old export must not make
    paragraphs, headings or odd bytes in the email, and must show the same
    whichever way the email is rendered (see `_Plan`).
    """
    if not text.isprintable():
        text = _CONTROLS.sub("", _LINE_BREAKS.sub(" ", text))
    return text.strip()


def _personal(value: Any) -> Any:
    """Mark a non-empty text value as the recipient's own; leave anything else as it is."""
    return _Personal(value) if isinstance(value, str) and value and not isinstance(value, Markup) else value


#: per-thread list of the values behind the slot tokens of the email being rendered
_slots = threading.local()
#: a value that is safe to put in a link target as it is (no spaces, quotes, brackets or controls)
_PLAIN_URL = re.compile(r"[A-Za-z0-9._~:/?#@!$&*+,;=%-]+\Z")


def _slot_or(fallback: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """Jinja `finalize`: a recipient's value becomes a slot token while compiling, else `fallback`."""

    def finalize(value: Any) -> Any:
        values: list[str] | None = getattr(_slots, "values", None)
        if values is not None and isinstance(value, _Personal):
            values.append(str(value))
            return f"{_slots.prefix}{len(values) - 1}z"
        return fallback(value)

    return finalize


def format_date(value: datetime | None) -> str:
    """`Thursday, January 14` (the datetime is already in the contact's timezone)."""
    if value is None:
        raise EmptyValueError("format_date got no date: guard it with {% if ... %}")
    return f"{value:%A, %B} {value.day}"


def format_time(value: datetime | None) -> str:
    """`7:00 PM MST`."""
    if value is None:
        raise EmptyValueError("format_time got no time: guard it with {% if ... %}")
    hour = value.hour % 12 or 12
    return f"{hour}:{value:%M %p} {value.tzname() or ''}".strip()


@dataclass(frozen=True)
class TemplateContact:
    email: str
    first_name: str | None = None
    last_name: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    #: she asked for discretion: templates can leave out what would reveal the subject
    discreet: bool = False


@dataclass(frozen=True)
class TemplateWebinar:
    """`webinar` in templates: the reader's own session of it.

    Every field is part of the memo key (`Renderer._value_key` walks them
    all, so a field added here cannot be forgotten there).
    """

    id: str
    title: str
    #: the registrant's own link when her export row had one, else the webinar's
    join_url: str | None
    replay_url: str | None
    #: this session's start, in the reader's zone
    start: datetime | None
    #: the session's id: its local start as first written (`funnel.sessions`); None without one
    session: str | None = None
    #: in a `rescheduled` step: where the session was before the move, in the reader's zone
    previous_start: datetime | None = None
    #: whether the webinar is recorded (`webinars.<id>.recorded`): false, no replay is promised
    recorded: bool = True
    #: hours from the moment the email is written (the send) to the start; None when either is
    #: unknown. The confirmation words itself for the time left ("we begin in about an hour").
    hours_until: float | None = None
    #: the next date of the webinar, for "sorry we missed you" letters (None: the letters invite
    #: her to the practice's website instead)
    next_start: datetime | None = None


#: TemplateWebinar fields that hold a moment (keyed by wall time and zone, not by value)
_WEBINAR_MOMENTS = ("start", "previous_start", "next_start")


def hours_between(now: datetime | None, start: datetime | None) -> float | None:
    """Hours from `now` to `start` (negative once it began), to the minute; None if either is unknown."""
    if now is None or start is None:
        return None
    return round((start - now).total_seconds() / 3600, 2)


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


@dataclass(frozen=True)
class _Body:
    """One compiled shape of a step's body: HTML and text with slot tokens."""

    html: str
    text: str
    #: slots printed in a link target: normalised and checked as markdown-it does
    url_slots: frozenset[int]
    #: the shape cannot be compiled faithfully (e.g. an autolink around a slot): render directly
    direct: bool = False
    #: an `.html` body: its text part is made from the filled HTML for each reader (inscriptis), since
    #: how a value's white space and entities read depends on where it stands (<pre>, a table)
    html_text: bool = False
    #: the Markdown has a backtick: a value with one could close a code span, so it renders directly
    backticks: bool = False
    #: url slot -> the words of its link: a target equal to them changes the text part (`_inline_text`)
    url_words: dict[int, str] = field(default_factory=dict)


#: how many shapes one step (or the layout) keeps; past it, new shapes are rendered without caching
_MAX_SHAPES = 512


# --------------------------------------------------------------------------- remembered renders


class _Unrememberable(Exception):
    """This context holds a value the memo cannot key safely: render it the ordinary way."""


#: the key of a reader's own value (`_Personal`): only its being there (truthy) shapes the output
_READERS = ("reader's value",)
#: the key of a path that is not there (a field this reader does not have)
_ABSENT = ("absent",)
#: top-level names whose values are the reader's own (or, for `content` in layout.txt, hold them)
_PERSONAL_NAMES = frozenset({"subject", "preheader", "unsubscribe_url", "content"})
#: `contact.X` that are the reader's own; `contact.discreet` is not, and `contact.fields.X` are
_CONTACT_PERSONAL = frozenset({"email", "first_name", "last_name"})
#: other names a remembered template may read: values the same for many readers, and safe globals
_VALUE_NAMES = frozenset({"practice", "webinar", "sequence", "step"})
_SAFE_GLOBALS = frozenset({"range", "dict", "namespace"})
#: nodes that capture or hand on rendered output (a slot token could be changed before it is filled),
#: or bring in other templates: a template with one is rendered every time
_NOT_REMEMBERED = (
    nodes.Macro,
    nodes.CallBlock,
    nodes.FilterBlock,
    nodes.AssignBlock,
    nodes.Block,
    nodes.Extends,
    nodes.Include,
    nodes.Import,
    nodes.FromImport,
)
#: filters whose result is not a function of their input
_UNSTABLE_FILTERS = frozenset({"random"})
#: a Python object's address, printed with a method or function: never the same output twice
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")


@dataclass(frozen=True)
class _Plan:
    """What a template reads of its context, when its output for one reader can be remembered.

    Every top-level render (subject, preheader, body, layout.html, layout.txt)
    costs a Jinja context and a sandbox check per attribute, though most
    readers get the same output with their own values in the slots. A
    template's output with slot tokens, and the list of values behind them,
    is a function of its context; `_plan` proves from the template's syntax
    tree that it reads the reader's own values (`_Personal`: names, fields,
    address, unsubscribe link, subject, preheader, and layout.txt's content)
    only

    - printed as they are (`{{ x }}`, `{{ x or 'friend' }}`, `{{ a if x else b }}`):
      the value becomes a slot token, whatever it says; or
    - for their truth (`{% if x %}`, `not x`): a `_Personal` is never empty, so always true.

    So the output depends on a reader's own value only through *whether* it
    is one, and on everything else through its value. The memo key is made
    of exactly that (`_Plan.key`), and the output is rendered once with
    stand-in values (`_Plan.stand_ins`) and remembered with the path of each
    slot's value; a reader with the same key gets the same output and her own
    values in the slots, byte for byte what rendering her would write.

    A template that uses a reader's value in any other way (a filter, a
    comparison, a test, `{% set %}`), captures output (macros, `{% filter %}`,
    blocks), pulls in another template, or reads a name not listed above is
    rendered every time, as before.
    """

    #: paths of reader's values read: ("subject",), ("contact", "first_name"), ("contact", "fields", "city"),
    #: ("contact", "fields", "city", "get") for `contact.fields.get('city')` (None when she has none)
    personal: tuple[tuple[str, ...], ...]
    #: paths of other values read: ("practice",), ("webinar",), ("contact", "discreet"), ...
    values: tuple[tuple[str, ...], ...]

    def key(self, renderer: Renderer, context: dict[str, Any]) -> tuple[Any, ...]:
        """What the output depends on; raises _Unrememberable for a value it cannot key safely."""
        personal = tuple(_personal_key(_read(context, path)) for path in self.personal)
        values = tuple(renderer._value_key(path, _read(context, path)) for path in self.values)
        return personal, values

    def stand_ins(self, context: dict[str, Any]) -> tuple[dict[str, Any], dict[str, int]]:
        """`context` with a distinct stand-in for each reader's value read, and which path each stands for."""
        context = dict(context)
        found: dict[str, int] = {}
        for index, path in enumerate(self.personal):
            if isinstance(_read(context, path), _Personal):
                stand_in = _Personal(f"\\x00{index}\\x00")
                found[stand_in] = index
                _write(context, path, stand_in)
        return context, found


def _read(context: dict[str, Any], path: tuple[str, ...]) -> Any:
    """The value at `path`, as the sandbox would find it for this plan's paths (or _ABSENT)."""
    value = context.get(path[0], _ABSENT)
    if len(path) == 1:
        return value
    if type(value) is not TemplateContact:
        raise _Unrememberable
    if len(path) == 2:
        return getattr(value, path[1])
    if type(value.fields) is not dict:
        raise _Unrememberable
    if len(path) == 4:  # contact.fields.get(name)
        return value.fields.get(path[2])
    return value.fields.get(path[2], _ABSENT)


def _write(context: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Put `value` at `path` in `context` (a copy made by the caller), copying the contact on the way."""
    if len(path) == 1:
        context[path[0]] = value
    elif len(path) == 2:
        context["contact"] = replace(context["contact"], **{path[1]: value})
    else:
        contact = context["contact"]
        context["contact"] = replace(contact, fields={**contact.fields, path[2]: value})


_PLAIN_TYPES = (str, Markup, int, float, bool, type(None))


def _personal_key(value: Any) -> Any:
    """A reader's value by what the output can depend on: that it is one, or else its exact value."""
    if isinstance(value, _Personal):
        if not value:  # never made (`_personal` marks only text that is there), but its truth would differ
            raise _Unrememberable
        return _READERS
    if value is _ABSENT:
        return _ABSENT
    if type(value) is _Empty:
        return ("empty", value._undefined_name)
    return _plain_key(value)


def _moment_key(moment: Any) -> Any:
    """A webinar moment by all that printing it can show (raises _Unrememberable for anything else)."""
    if moment is None:
        return None
    if type(moment) is _NoWebinarStart:
        return "no start"
    if type(moment) is datetime and moment.tzinfo is not None:
        # equal instants in two zones print differently, and datetime.timezone compares by offset
        # only: the wall time, the zone, and what it says for this wall time
        zone = moment.tzinfo
        when = (moment.replace(tzinfo=None), moment.fold, type(zone), zone)
        return (*when, moment.utcoffset(), moment.dst(), moment.tzname())
    raise _Unrememberable


def _plain_key(value: Any) -> tuple[type, Any]:
    """A simple value with its exact type (1, 1.0, True and '1' print differently)."""
    if type(value) not in _PLAIN_TYPES:
        raise _Unrememberable
    return type(value), value


def _plan(env: Environment, ast: nodes.Template) -> _Plan | None:
    """The `_Plan` of a template, or None when its output cannot be remembered (see `_Plan`)."""
    names = meta.find_undeclared_variables(ast)
    if not names <= _PERSONAL_NAMES | _VALUE_NAMES | _SAFE_GLOBALS | {"contact"}:
        return None
    personal: set[tuple[str, ...]] = set()
    values: set[tuple[str, ...]] = set()

    def path_of(node: nodes.Node) -> tuple[str, ...] | None:
        """The path a node reads, for the names and attributes a plan knows; else None."""
        if isinstance(node, nodes.Name) and node.ctx == "load":
            if node.name in _PERSONAL_NAMES or node.name in _VALUE_NAMES:
                return (node.name,)
            return None
        if isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "contact":
            if node.attr in _CONTACT_PERSONAL or node.attr == "discreet":
                return ("contact", node.attr)
            return None
        if (
            isinstance(node, nodes.Call)
            and isinstance(node.node, nodes.Getattr)
            and node.node.attr == "get"
            and len(node.args) == 1
            and isinstance(node.args[0], nodes.Const)
            and isinstance(node.args[0].value, str)
            and not (node.kwargs or node.dyn_args or node.dyn_kwargs)
        ):
            fields = node.node.node  # `contact.fields.get('message')`: the field, or None
            if (
                isinstance(fields, nodes.Getattr)
                and fields.attr == "fields"
                and isinstance(fields.node, nodes.Name)
                and fields.node.name == "contact"
            ):
                return ("contact", "fields", node.args[0].value, "get")
            return None
        inner = node.node if isinstance(node, (nodes.Getattr, nodes.Getitem)) else None
        if (
            isinstance(inner, nodes.Getattr)
            and inner.attr == "fields"
            and isinstance(inner.node, nodes.Name)
            and inner.node.name == "contact"
        ):
            if isinstance(node, nodes.Getattr):
                field_name: Any = node.attr
            else:
                assert isinstance(node, nodes.Getitem)
                field_name = node.arg.value if isinstance(node.arg, nodes.Const) else None
            # a field named like a dict method would be the method: not a value
            if isinstance(field_name, str) and not hasattr(dict, field_name):
                return ("contact", "fields", field_name)
        return None

    def visit(node: nodes.Node, use: str | None) -> bool:
        """False if `node` uses a reader's value other than printed (`use` "print") or tested ("test")."""
        path = path_of(node)
        if path is not None:
            if path[0] in _VALUE_NAMES or path == ("contact", "discreet"):
                values.add(path)
                return True
            personal.add(path)
            return use is not None
        if isinstance(node, nodes.Name) and node.name in ("contact", "self"):
            return False  # all of the contact (or the template itself) handed on: anything can happen
        if isinstance(node, nodes.Name) and node.name in env.globals and node.name not in _SAFE_GLOBALS:
            return False  # lipsum, cycler, joiner: not the same output twice (not in find_undeclared_variables)
        if isinstance(node, _NOT_REMEMBERED):
            return False
        if isinstance(node, nodes.Filter) and node.name in _UNSTABLE_FILTERS:
            return False
        if isinstance(node, nodes.Output):
            return all(visit(child, "print") for child in node.nodes)
        if isinstance(node, nodes.If):
            return visit(node.test, "test") and all(
                visit(child, None) for child in (*node.body, *node.elif_, *node.else_)
            )
        if isinstance(node, nodes.CondExpr):
            return (
                visit(node.test, "test") and visit(node.expr1, use) and (node.expr2 is None or visit(node.expr2, use))
            )
        if isinstance(node, nodes.Not):
            return visit(node.node, "test")
        if isinstance(node, (nodes.And, nodes.Or)):
            return visit(node.left, use) and visit(node.right, use)
        return all(visit(child, None) for child in node.iter_child_nodes())

    if not visit(ast, None):
        return None
    return _Plan(personal=tuple(sorted(personal)), values=tuple(sorted(values)))


#: (environment's kind, template name, source) -> (its syntax tree, its compiled code): see `_compiled`
_COMPILED: dict[tuple[tuple[bool, ...], str | None, str | None, str], tuple[nodes.Template, CodeType]] = {}
#: how many compiled sources `_COMPILED` keeps (a few versions of one project; past it, it starts afresh)
_COMPILED_MAX = 2048
_COMPILED_LOCK = threading.Lock()


def _compiled(
    env: Environment, name: str | None, filename: str | None, source: str, where: str = ""
) -> tuple[nodes.Template, CodeType]:
    """The syntax tree and code Jinja makes of `source`, once per process.

    A Renderer compiles every step's template, subject and preheader when it
    starts (so a broken one stops a run before anything is sent): about 60 ms
    for the shipped project, most of what `funnel run` costs when little is
    due. The code depends only on the source, the template's name and how the
    environment is set up (`kind`, see `_environment`), and its file's name
    (render errors find their line by it in the traceback), so a process that
    makes several Renderers (`funnel serve`, a scheduler or test calling the
    CLI in-process) compiles each source once. Syntax errors are not kept.
    The tree is the one the code was compiled from, for `_plan`; nothing
    changes it after compiling. A template file (`where` names it) is first
    checked by `_refuse_unsafe`, once with its compiling; a refused one is not kept.
    """
    key = (env.kind, name, filename, source)  # type: ignore[attr-defined]  # set by `_environment`
    known = _COMPILED.get(key)
    if known is None:
        if where:
            _refuse_unsafe(env, where, source)
        tree = env.parse(source, name, filename)
        code = env.compile(tree, name, filename)
        with _COMPILED_LOCK:
            if len(_COMPILED) >= _COMPILED_MAX:
                _COMPILED.clear()
            known = _COMPILED[key] = (tree, code)
    return known


def _refuse_unsafe(environment: Environment, where: str, source: str) -> None:
    """Refuse a template a reader's value could escape from, naming `where:line` (any file the
    loader reads: a layout, a step, or a part they include, import or extend)."""
    autoescape, markdown, _slots = environment.kind  # type: ignore[attr-defined]  # set by `_environment`
    if autoescape and (at := unquoted_value(source)) is not None:
        line = source.count("\n", 0, at) + 1
        raise TemplateError(
            f"{where}:{line}: a value printed inside an HTML tag must be in a quoted attribute: write "
            'title="{{ ... }}" (in a bare one, or as a tag\'s name, a value could add attributes)'
        )
    if markdown and (at := backslashed_value(source)) is not None:
        line = source.count("\n", 0, at) + 1
        raise TemplateError(
            f"{where}:{line}: a backslash right before {{{{ }}}} would let the value's first character act "
            "as Markdown: write two backslashes for one"
        )


class _SourceLoader(FileSystemLoader):
    """Templates from a folder, keeping the syntax tree of the source each was compiled from.

    A template's `_Plan` must describe the source that was compiled, not the
    file as it may be a moment later.
    """

    def __init__(self, folder: str, label: str) -> None:
        super().__init__(folder)
        #: the folder as errors name it (`email_templates`)
        self.label = label
        #: name -> the syntax tree of the source last compiled
        self.trees: dict[str, nodes.Template] = {}

    def load(self, environment: Environment, name: str, globals: MutableMapping[str, Any] | None = None) -> Template:
        """Jinja's `BaseLoader.load` (without a bytecode cache), parsing once: the tree that is
        compiled is kept for the `_Plan`, instead of parsing the file a second time for it."""
        source, filename, uptodate = self.get_source(environment, name)
        tree, code = _compiled(environment, name, filename, source, where=f"{self.label}/{name}")
        self.trees[name] = tree
        return environment.template_class.from_code(environment, code, environment.make_globals(globals), uptodate)


class _Sandbox(SandboxedEnvironment):
    """Jinja's sandbox, with its verdict on each attribute remembered per (type of object, attribute).

    Every `a.b` in a template asks `is_safe_attribute`, which walks
    `is_internal_attribute`'s isinstance chain: about a third of the CPU of an
    email. The default verdict depends only on the attribute's name and on
    isinstance checks of the object against built-in types (function, method,
    type, code, traceback, frame, generator, coroutine), which for an object
    whose `__class__` is its type are decided by that type alone (no built-in
    type can be subclassed or overrides `__instancecheck__` in a way that
    looks at the instance). So the verdict is asked once per pair and
    remembered; an object that reports another `__class__` than its type is
    asked every time, exactly as before. What is refused stays refused.
    """

    #: how many (type, attribute) verdicts are remembered; past it, the rest are asked every time
    _MAX_VERDICTS = 4096

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._verdicts: dict[tuple[type, str], bool] = {}

    def is_safe_attribute(self, obj: Any, attr: str, value: Any) -> bool:
        cls = type(obj)
        if obj.__class__ is not cls:
            return super().is_safe_attribute(obj, attr, value)
        key = (cls, attr)
        verdict = self._verdicts.get(key)
        if verdict is None:
            verdict = super().is_safe_attribute(obj, attr, value)
            if len(self._verdicts) < self._MAX_VERDICTS:
                self._verdicts[key] = verdict
        return verdict


def _environment(
    folder: Path, label: str, *, autoescape: bool, markdown: bool = False, slots: bool = False
) -> Environment:
    finalize = markdown_escape if markdown else refuse_empty
    env = _Sandbox(
        loader=_SourceLoader(str(folder), label),
        undefined=StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        finalize=_slot_or(finalize) if slots else finalize,
    )
    #: what the compiled code depends on besides the source (see `_compiled`)
    env.kind = (autoescape, markdown, slots)  # type: ignore[attr-defined]
    env.filters["format_date"] = format_date
    env.filters["format_time"] = format_time
    return env


class Renderer:
    """Every template of one config, compiled once; renders emails on demand.

    `jump_key` signs the neutral links of discreet readers' emails (`funnel.jump`):
    the secret key, for mail that is sent; without it (`funnel check`, a sample
    preview) the links are examples that `funnel serve` does not answer.
    """

    def __init__(self, config: Config, *, jump_key: str | None = None) -> None:
        self.config = config
        self._jump_key = jump_key
        self._jumps = jump_links(config, jump_key)
        self.folder = config.templates_path
        label = config.templates_dir
        self._md_env = _environment(self.folder, label, autoescape=False, markdown=True, slots=True)
        self._html_env = _environment(self.folder, label, autoescape=True, slots=True)
        # slots too: layout.txt, subjects and preheaders are remembered with slot tokens (see `_Plan`)
        self._text_env = _environment(self.folder, label, autoescape=False, slots=True)
        #: template -> its `_Plan` (None: rendered every time), and its remembered outputs
        self._plans: dict[Template, _Plan | None] = {}
        #: the syntax tree each template was compiled from, until its plan is worked out (on first use:
        #: a run renders few of the steps it compiles, and the analysis costs as much as compiling)
        self._trees: dict[Template, tuple[Environment, nodes.Template]] = {}
        self._memos: dict[Template, dict[tuple[Any, ...], tuple[str, tuple[tuple[str, ...], ...]]]] = {}
        self._prefix = f"fnl{secrets.token_hex(8)}x"
        self._token = re.compile(re.escape(self._prefix) + r"(\d+)z")
        self._value_decides = _value_decides(self._prefix)
        self._shapes: dict[tuple[str, str, str], _Body] = {}
        #: source -> its pieces around slot tokens (see `_fill`)
        self._cut: dict[str, tuple[tuple[str, ...], tuple[tuple[int, str], ...]]] = {}
        self._pages: dict[str, str] = {}
        #: inlined page -> where each of its slot tokens stands (see `_html_contexts`)
        self._contexts: dict[str, tuple[str | None, ...]] = {}
        self._markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
        self._inliner = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)
        self.layout_html = self._load(self._html_env, "layout.html")
        self.layout_text = self._load_optional(self._text_env, "layout.txt")
        self._mapped_fields = {
            name for source in config.sources.values() for name in source.columns if name not in KNOWN_FIELDS
        }
        #: each mapped field as blank, the start of every reader's fields (`_Empty` never changes: shared)
        self._blank_fields = {name: _blank(f"contact.fields.{name}") for name in self._mapped_fields}
        self._bodies: dict[tuple[str, str], tuple[str, Template]] = {}
        self._subjects: dict[tuple[str, str, bool], Template] = {}
        #: (sequence, step, discreet) -> the step's preheader (discreet: only `discreet_preheader`)
        self._preheaders: dict[tuple[str, str, bool], Template] = {}
        # discreet readers see the sender's discreet name in the From: the signature matches it; their
        # footer holds the discreet postal address (a PO box) when there is one
        practice = config.practice
        self._discreet_practice = practice.model_copy(
            update={
                "from_name": practice.discreet_from_name or practice.from_name,
                "postal_address": practice.discreet_postal_address or practice.postal_address,
            }
        )
        problems: list[str] = []
        for sid, sequence in config.sequences.items():
            for step in sequence.steps:
                try:
                    self._compile_step(sid, step)
                except TemplateError as exc:
                    problems.append(str(exc))
        if problems:
            raise TemplateError("; ".join(problems)) if len(problems) > 1 else TemplateError(problems[0])

    def sign_links_with(self, key: str) -> None:
        """Sign discreet readers' links with `key` from now on (a renderer made before the key was read)."""
        if key != self._jump_key:  # the same key: nothing to do (no templates read again per email)
            self._jumps, self._jump_key = jump_links(self.config, key), key

    def _finished(self, subject: str, text: str, html: str | None, discreet: bool) -> Rendered:
        """The email as it leaves the renderer, by every path (remembered shapes, direct rendering).

        A discreet reader's plain text is final here: each link the practice
        wrote becomes its neutral `/j/` link (`funnel.jump`), after every
        cache and memo, so no fast path can hand out the real URL. The
        unsubscribe link is not one of them and stays as it is.
        """
        if discreet:
            text = self._jumps.rewrite(text, self.config.practice.base_url)
        return Rendered(subject=subject, text=text, html=html)

    # ----------------------------------------------------------------- compile

    def _load(self, env: Environment, name: str) -> Template:
        """Compile a template file, with the `_Plan` of the very source compiled (see `_SourceLoader`)."""
        try:
            template = env.get_template(name)
        except TemplateNotFound:
            raise TemplateError(f"{self.config.templates_dir}/{name}: not found: create it (see the README)") from None
        except TemplateSyntaxError as exc:
            raise TemplateError(_syntax_message(self.config.templates_dir, name, exc)) from None
        assert isinstance(env.loader, _SourceLoader)
        self._trees[template] = (env, env.loader.trees[name])
        return template

    def _from_string(self, source: str) -> Template:
        """Compile a subject or preheader (raises TemplateSyntaxError), with its `_Plan`."""
        env = self._text_env
        ast, code = _compiled(env, None, None, source)
        template = env.template_class.from_code(env, code, env.make_globals(None), None)
        self._trees[template] = (env, ast)
        return template

    def _plan_of(self, template: Template) -> _Plan | None:
        """The template's `_Plan` (None: not remembered), worked out the first time it is rendered."""
        try:
            return self._plans[template]
        except KeyError:
            pass
        tree = self._trees.pop(template, None)
        plan = self._plans[template] = _plan(*tree) if tree is not None else None
        return plan

    def _load_optional(self, env: Environment, name: str) -> Template | None:
        if not (self.folder / name).is_file():
            return None
        return self._load(env, name)

    def _compile_step(self, sid: str, step: Step) -> None:
        kind = "html" if step.template.endswith((".html", ".htm")) else "md"
        env = self._html_env if kind == "html" else self._md_env
        self._bodies[(sid, step.id)] = (kind, self._load(env, step.template))
        for discreet in (False, True):
            source = self.subject_source(step, discreet)
            try:
                self._subjects[(sid, step.id, discreet)] = self._from_string(source)
            except TemplateSyntaxError as exc:
                said = explain_syntax(exc.message or "") or f"{plain(exc.message or '')}: check the {{{{ }}}} braces"
                raise TemplateError(f"{self._subject_where(sid, step, discreet)}: {said}") from None
            preheader = step.discreet_preheader if discreet else step.preheader
            if preheader is None:
                continue
            try:
                self._preheaders[(sid, step.id, discreet)] = self._from_string(preheader)
            except TemplateSyntaxError as exc:
                said = explain_syntax(exc.message or "") or f"{plain(exc.message or '')}: check the {{{{ }}}} braces"
                raise TemplateError(f"{self._preheader_where(sid, step, discreet)}: {said}") from None

    def _preheader_where(self, sid: str, step: Step, discreet: bool) -> str:
        """`sequences.yaml:LINE: preheader of step X in Y`, for errors in a preheader."""
        index = next(i for i, s in enumerate(self.config.sequences[sid].steps) if s.id == step.id)
        key = "discreet_preheader" if discreet else "preheader"
        line = self.config.line_of("sequences", sid, "steps", index, key)
        return f"{self.config.path.name}:{line or 1}: {key} of step {step.id!r} in {sid}"

    def _subject_where(self, sid: str, step: Step, discreet: bool) -> str:
        """`sequences.yaml:LINE: subject of step X in Y`, for errors in a subject."""
        sequence = self.config.sequences[sid]
        index = next(i for i, s in enumerate(sequence.steps) if s.id == step.id)
        key = "discreet_subject" if discreet and step.discreet_subject else "subject"
        line = self.config.line_of("sequences", sid, "steps", index, key)
        if discreet and not step.discreet_subject:
            line, key = self.config.line_of("practice", "discreet_subject"), "practice.discreet_subject"
        return f"{self.config.path.name}:{line or 1}: {key} of step {step.id!r} in {sid}"

    def subject_source(self, step: Step, discreet: bool) -> str:
        if discreet:
            return step.discreet_subject or self.config.practice.discreet_subject
        return step.subject

    # ----------------------------------------------------------------- render

    def render(
        self,
        sequence_id: str,
        sequence: Sequence,
        step: Step,
        contact: TemplateContact,
        webinar: TemplateWebinar | None,
        unsubscribe_url: str,
        *,
        discreet: bool = False,
    ) -> Rendered:
        """Render one email; raises TemplateError naming the template file and line.

        A discreet reader gets `contact.discreet` true, `practice.from_name` set to
        the discreet sender name (the signature matches the From), only the step's
        `discreet_preheader` (never the other one) and a plain-text email that
        starts with it.

        The expensive parts come from the per-shape cache (see the module
        docstring); only the recipient's values are filled in here.
        """
        context = self._context(sequence_id, sequence, step, contact, webinar, unsubscribe_url, discreet)
        subject = self._headings(sequence_id, step, context, discreet, personal=True)
        values: list[str] = []
        kind, template = self._bodies[(sequence_id, step.id)]
        shape_source = self._remembered(template, context, values, step.template, slots=True)
        body = self._shape(sequence_id, step.id, kind, shape_source)
        fill = self._filler(body, values)
        if fill is None:
            return self._render_direct(
                sequence_id, sequence, step, contact, webinar, unsubscribe_url, discreet=discreet
            )
        if body.html_text:
            text_body = _html_to_text(self._fill(body.html, lambda index, _where: _escaped(fill(index, "text"))))
        else:
            text_body = self._fill(body.text, fill)
        text = self._with_preheader(self._wrap_text_remembered(text_body, context), context)
        html = None
        if not discreet:
            page_source = self._remembered(
                self.layout_html, {**context, "content": Markup(body.html)}, values, "layout.html", slots=True
            )
            page = self._pages.get(page_source)
            if page is None:
                page = self._inline(page_source)
                if len(self._pages) < _MAX_SHAPES:
                    self._pages[page_source] = page
            where = self._html_contexts(page)
            if None in where:  # a value in a comment, a <style>, a tag's name: the serialiser decides
                return self._render_direct(
                    sequence_id, sequence, step, contact, webinar, unsubscribe_url, discreet=discreet
                )
            html = self._fill(page, fill, cast(tuple[str, ...], where))
        return self._finished(subject, text, html, discreet)

    def _render_direct(
        self,
        sequence_id: str,
        sequence: Sequence,
        step: Step,
        contact: TemplateContact,
        webinar: TemplateWebinar | None,
        unsubscribe_url: str,
        *,
        discreet: bool = False,
    ) -> Rendered:
        """Render one email without the shape cache: values escaped into the Markdown, parsed per email.

        The path for what slots cannot represent; also the reference the fast path is tested against.
        """
        context = self._context(sequence_id, sequence, step, contact, webinar, unsubscribe_url, discreet)
        subject = self._headings(sequence_id, step, context, discreet, personal=False)
        kind, body = self._bodies[(sequence_id, step.id)]
        if kind == "md":
            source = self._run(body, context, step.template)
            tokens = _fix_autolinks(self._markdown.parse(source), self._markdown)
            html_body = Markup(self._markdown.renderer.render(tokens, self._markdown.options, {}))
            text_body = tokens_to_text(tokens)
        else:
            html_body = Markup(self._run(body, context, step.template))
            text_body = _html_to_text(str(html_body))
        text = self._with_preheader(self._wrap_text(text_body, context), context)
        html = None
        if not discreet:
            html = self._inline(self._run(self.layout_html, {**context, "content": html_body}, "layout.html"))
        return self._finished(subject, text, html, discreet)

    def _context(
        self,
        sequence_id: str,
        sequence: Sequence,
        step: Step,
        contact: TemplateContact,
        webinar: TemplateWebinar | None,
        unsubscribe_url: str,
        discreet: bool,
    ) -> dict[str, Any]:
        """The template variables, with the recipient's own values marked as `_Personal`.

        Blank values become `_Empty` (falsy; an error when printed bare) and a
        missing webinar start `_NoWebinarStart` (using it skips the email).
        """
        if webinar is not None and webinar.start is None:
            webinar = replace(webinar, start=_NoWebinarStart(name="webinar.start"))  # type: ignore[arg-type]
        # blank values (and mapped fields a row left empty) as `_Empty`: falsy, refused when printed bare
        fields = dict(self._blank_fields)  # the same order as ever: mapped fields first, then the row's
        # each value shown on one line (`_one_line`): one that was only white space is blank too
        for key, value in contact.fields.items():
            if isinstance(value, str):
                value = _one_line(value)
            fields[key] = _blank(f"contact.fields.{key}") if value is None or value == "" else _personal(value)
        first_name = _one_line(contact.first_name or "")
        last_name = _one_line(contact.last_name or "")
        personal = TemplateContact(
            email=_personal(_one_line(contact.email)),
            first_name=_personal(first_name) if first_name else _blank("contact.first_name"),
            last_name=_personal(last_name) if last_name else _blank("contact.last_name"),
            fields=fields,
            discreet=discreet,
        )
        return {
            "contact": personal,
            "practice": self._discreet_practice if discreet else self.config.practice,
            "webinar": webinar,
            "unsubscribe_url": _personal(unsubscribe_url),
            "sequence": {"id": sequence_id, "name": sequence.name or sequence_id},
            "step": {"id": step.id},
        }

    def _headings(
        self, sequence_id: str, step: Step, context: dict[str, Any], discreet: bool, *, personal: bool
    ) -> str:
        """Render the subject and the preheader into `context`; returns the subject.

        `personal` (the fast path): they go into `context` as the reader's own
        values, for the shape cache, and are rendered through the memo
        (`_remembered`); otherwise they are rendered plainly, the reference.
        A discreet reader only gets the step's `discreet_preheader`, or none.
        """
        subject_template = self._subjects[(sequence_id, step.id, discreet)]
        subject = self._heading(
            subject_template, context, lambda: self._subject_where(sequence_id, step, discreet), personal
        )
        preheader = ""
        preheader_template = self._preheaders.get((sequence_id, step.id, discreet))
        if preheader_template is not None:
            preheader = self._heading(
                preheader_template,
                context | {"subject": _Personal(subject) if personal and subject else subject},
                lambda: self._preheader_where(sequence_id, step, discreet),
                personal,
            )
        context["subject"] = _Personal(subject) if personal and subject else subject
        context["preheader"] = _Personal(preheader) if personal and preheader else preheader
        return subject

    def _heading(self, template: Template, context: dict[str, Any], where: Callable[[], str], remembered: bool) -> str:
        """A subject or preheader, on one line (runs of white space folded)."""
        if remembered:
            values: list[str] = []
            text = self._fill_raw(self._remembered(template, context, values, where, slots=False), values)
        else:
            text = self._run(template, context, where)
        return " ".join(text.split())

    def _remembered(
        self,
        template: Template,
        context: dict[str, Any],
        values: list[str],
        name: str | Callable[[], str],
        *,
        slots: bool,
    ) -> str:
        """Render `template` with the reader's values as slot tokens appended to `values`, from the memo
        when the template's `_Plan` allows (the output is then the same, see `_Plan`).

        A template the memo cannot take is rendered as it always was: with slot
        tokens if `slots` (a body, layout.html), else with the reader's values
        written in and nothing added to `values` (a subject, a preheader,
        layout.txt: `{% filter upper %}` around a value keeps working there).
        """

        def ordinary() -> str:
            if not slots:
                return self._run(template, context, name)
            with self._slotting(values):
                return self._run(template, context, name)

        plan = self._plan_of(template)
        if plan is None:
            return ordinary()
        try:
            key = (len(values), *plan.key(self, context))
        except _Unrememberable:
            return ordinary()
        memo = self._memos.setdefault(template, {})
        known = memo.get(key)
        if known is None:
            stand_ins, paths = plan.stand_ins(context)
            scratch = list(values)  # tokens are numbered on from len(values)
            with self._slotting(scratch):
                output = self._run(template, stand_ins, name)
            read = tuple(paths.get(value, -1) for value in scratch[len(values) :])
            if -1 in read or _ADDRESS.search(output):  # a value not stood in for (cannot be), an address
                return ordinary()
            known = (output, tuple(plan.personal[index] for index in read))
            if len(memo) < _MAX_SHAPES:
                memo[key] = known
        output, paths_read = known
        values.extend(str(_read(context, path)) for path in paths_read)
        return output

    def _value_key(self, path: tuple[str, ...], value: Any) -> Any:
        """A value that is not the reader's own, by everything its use in a template can show
        (raises _Unrememberable for anything else)."""
        if path == ("practice",):
            if value is self.config.practice:
                return 0
            if value is self._discreet_practice:
                return 1
            raise _Unrememberable
        if path == ("webinar",):
            if value is None:
                return None
            if type(value) is not TemplateWebinar:
                raise _Unrememberable
            # every field, by name: a field added to TemplateWebinar is in the key without a word here
            return tuple(
                _moment_key(getattr(value, f.name))
                if f.name in _WEBINAR_MOMENTS
                else _plain_key(getattr(value, f.name))
                for f in fields(TemplateWebinar)
            )
        if path in (("sequence",), ("step",)):
            if type(value) is not dict:
                raise _Unrememberable
            return tuple((k, _plain_key(v)) for k, v in value.items())
        return _plain_key(value)  # contact.discreet

    def _fill_raw(self, source: str, values: list[str]) -> str:
        """`source` with its slot tokens replaced by `values` as they are (a subject, the text layout)."""
        if not values:
            return source
        return self._fill(source, lambda index, _where: values[index] if index < len(values) else None)

    def _fill(self, source: str, fill: Callable[[int, str], str | None], where: tuple[str, ...] | None = None) -> str:
        """`source` with each slot token replaced by `fill(its number, where it is)`, or left as written for None.

        `where` holds each token's place in an HTML page (`_html_contexts`); in
        any other source every token is "text". The same as `self._token.sub`,
        but the sources filled (a shape's text, an inlined page, a remembered
        output) come back for every reader: each is cut at its tokens once
        (`_pieces`), and an email only joins the pieces with its values
        instead of scanning the page.
        """
        texts, tokens = self._pieces(source)
        if not tokens:
            return source
        out = [texts[0]]
        for position, ((index, written), text) in enumerate(zip(tokens, texts[1:], strict=True)):
            value = fill(index, where[position] if where is not None else "text")
            out.append(written if value is None else value)
            out.append(text)
        return "".join(out)

    def _html_contexts(self, page: str) -> tuple[str | None, ...]:
        """Where each slot token of an inlined page stands: "html" (text), "attr" (a quoted attribute
        value) or None: anywhere the serialiser or the CSS inliner treats a value otherwise (a comment,
        raw text such as <style>, a tag's name, a style attribute, an attribute an attribute
        selector of the page's CSS may match, script, CDATA, SVG or MathML)."""
        found = self._contexts.get(page)
        if found is None:
            spans = _markup_spans(page)
            starts = [start for start, _end, _kind in spans]
            lowered = page.lower()
            foreign = any(mark in lowered for mark in ("<script", "<![cdata[", "<svg", "<math"))
            selectors = any(kind == "raw" and "[" in page[start:end] for start, end, kind in spans)
            places: list[str | None] = []
            for match in self._token.finditer(page):
                at = bisect_right(starts, match.start()) - 1
                if foreign:
                    places.append(None)
                elif page.endswith(("&amp;", "&amp;#"), 0, match.start()):
                    places.append(None)  # the template's `&` before a value: together a character reference?
                elif at < 0 or match.start() >= spans[at][1]:
                    places.append("html")
                elif spans[at][2] == "tag" and page.count('"', spans[at][0], match.start()) % 2 == 1:
                    attribute = _ATTRIBUTE.search(page, spans[at][0], match.start())
                    styled = attribute is not None and attribute.group(1).lower() == "style"
                    places.append(None if styled or selectors else "attr")
                else:
                    places.append(None)
            found = tuple(places)
            if len(self._contexts) < _MAX_SHAPES:
                self._contexts[page] = found
        return found

    def _pieces(self, source: str) -> tuple[tuple[str, ...], tuple[tuple[int, str], ...]]:
        """`source` cut at its slot tokens: the texts around them, and each token's number and text."""
        pieces = self._cut.get(source)
        if pieces is None:
            parts = self._token.split(source)  # text, number, text, number, ..., text
            texts = tuple(parts[0::2])
            tokens = tuple((int(number), f"{self._prefix}{number}z") for number in parts[1::2])
            pieces = (texts, tokens)
            if len(self._cut) < 2 * _MAX_SHAPES:
                self._cut[source] = pieces
        return pieces

    @staticmethod
    def _with_preheader(text: str, context: dict[str, Any]) -> str:
        """A text-only (discreet) email's inbox preview is its first line: the neutral preheader."""
        if context["contact"].discreet and context["preheader"]:
            return f"{context['preheader']}\n\n{text}"
        return text

    @contextmanager
    def _slotting(self, values: list[str]) -> Iterator[None]:
        """While inside, the recipient's values print as slot tokens appended to `values`."""
        _slots.values, _slots.prefix = values, self._prefix
        try:
            yield
        finally:
            _slots.values = None

    def _shape(self, sequence_id: str, step_id: str, kind: str, source: str) -> _Body:
        """The compiled body for one shape of a step, from the cache or compiled now."""
        key = (sequence_id, step_id, source)
        body = self._shapes.get(key)
        if body is None:
            body = self._compile_shape(kind, source)
            if len(self._shapes) < _MAX_SHAPES * max(1, len(self._bodies)):
                self._shapes[key] = body
        return body

    def _compile_shape(self, kind: str, source: str) -> _Body:
        if kind != "md":
            return _Body(html=source, text="", url_slots=frozenset(), html_text=True)
        direct = _Body(html="", text="", url_slots=frozenset(), direct=True)
        if re.search(r"<[^<>\s]*" + re.escape(self._prefix), source):
            return direct  # an autolink around a value
        if self._value_decides.search(source):
            return direct  # emphasis, an entity or a list marker that only her value can complete
        references: dict[str, Any] = {}
        tokens = self._markdown.parse(source, references)
        if references.get("references") and self._prefix in source:
            return direct  # a value could complete a reference's label: `[Hi {{ name }}]` + `[hi ann]: ...`
        url_slots: set[int] = set()
        url_words: dict[int, str] = {}
        for token in tokens:
            if _in_code(token, self._prefix):
                # Markdown shows a value's backslash escapes inside code as they are; rendered
                # directly, both paths write the same (see the README on values in code)
                return direct
            links = _value_links(token.children or [], self._token)
            if links is None:
                return direct
            for index, words in links.items():
                url_slots.add(index)
                url_words[index] = words
        html = self._markdown.renderer.render(tokens, self._markdown.options, {})
        return _Body(
            html=html,
            text=tokens_to_text(tokens),
            url_slots=frozenset(url_slots),
            backticks="`" in source,
            url_words=url_words,
        )

    def _filler(self, body: _Body, values: list[str]) -> Callable[[int, str], str | None] | None:
        """The function that fills slot tokens with `values`, or None when this email must render directly."""
        if body.direct or (body.backticks and any("`" in value for value in values)):
            return None
        urls: dict[int, str] = {}
        for index in body.url_slots:
            if index >= len(values) or not _PLAIN_URL.match(values[index]):
                return None
            url = self._markdown.normalizeLink(values[index])
            if not self._markdown.validateLink(url):
                return None
            words = body.url_words.get(index)
            if words is not None and (url == words or url.startswith("mailto:" + words)):
                return None  # the text part leaves such a target out: as rendering her directly does
            urls[index] = url

        def fill(index: int, where: str) -> str | None:
            # `values` is read when filling: the layout adds its own slots after the body's
            if index >= len(values):  # a token-like string that is not ours: leave it as written
                return None
            value = urls.get(index, values[index])
            if where == "text":
                return value
            # as css_inline's serialiser (html5ever) writes text and double-quoted attribute values
            value = value.replace("&", "&amp;").replace("\xa0", "&nbsp;")
            if where == "attr":
                return value.replace('"', "&quot;")
            return value.replace("<", "&lt;").replace(">", "&gt;")

        return fill

    def _inline(self, page: str) -> str:
        """The page with its CSS inlined; CSS the inliner cannot read (a reader's value in a style
        attribute, say) fails this email with a TemplateError naming the layout."""
        try:
            return str(self._inliner.inline(page))
        except css_inline.InlineError as exc:
            raise TemplateError(
                f"{self.config.templates_dir}/layout.html: its CSS cannot be read for this email ({exc}): "
                "keep people's values out of style attributes and <style>"
            ) from None

    def _wrap_text(self, body: str, context: dict[str, Any]) -> str:
        if self.layout_text is None:
            practice = context["practice"]  # a discreet reader's: her postal address
            name = "" if context["contact"].discreet else f"{practice.name}\n"  # a neutral footer for her
            return (
                f"{body.rstrip()}\n\n--\n{name}{practice.postal_address}\n"
                f"Unsubscribe with one click: {context['unsubscribe_url']}\n"
            )
        return self._run(self.layout_text, {**context, "content": body.rstrip()}, "layout.txt").strip() + "\n"

    def _wrap_text_remembered(self, body: str, context: dict[str, Any]) -> str:
        """`_wrap_text` through the memo: the filled text body goes into layout.txt as one slot."""
        if self.layout_text is None:
            return self._wrap_text(body, context)
        values: list[str] = []
        content = _personal(body.rstrip())
        output = self._remembered(self.layout_text, {**context, "content": content}, values, "layout.txt", slots=False)
        return self._fill_raw(output, values).strip() + "\n"

    def _run(self, template: Template, context: dict[str, Any], name: str | Callable[[], str]) -> str:
        """Render `template`; an error becomes a TemplateError naming the file and line.

        `name` is the template's file, or for a subject or preheader a function that
        says where it is in sequences.yaml (only worked out when there is an error).
        """
        try:
            return template.render(context)
        except TemplateError:
            raise  # MissingData and the like already say what is wrong
        except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
            # the template's own expression failed ({{ 1 / 0 }}, a range the sandbox refuses):
            # a template error with its line, so one bad template never stops a run or `funnel check`
            message = plain(str(exc)) or "the expression could not be worked out"
            if callable(name):
                name = name()
            if template.name is None:
                raise TemplateError(f"{name}: {message}: fix the expression") from None
            line = _template_line(exc, template)
            raise TemplateError(f"{self.config.templates_dir}/{name}:{line}: {message}: fix the expression") from None
        except JinjaTemplateError as exc:
            if callable(name):
                name = name()
            line = 0 if template.name is None else _template_line(exc, template)
            said = self._said(exc, _line_text(template, line) if line else "")
            if template.name is None:  # a subject: `name` already says file, line and step
                raise TemplateError(f"{name}: {said}") from None
            raise TemplateError(f"{self.config.templates_dir}/{name}:{line}: {said}") from None

    def _said(self, exc: JinjaTemplateError, line: str) -> str:
        """The error and what to do, in the author's words (`funnel.template_hints`), never a class name."""
        message = str(exc.message or exc)
        if not isinstance(exc, SecurityError | EmptyValueError):
            better = explain(message, self.config, line)
            if better:
                return better
        return f"{plain(message)}: {_hint(exc)}"


@lru_cache(maxsize=1)
def _text_config() -> Any:
    """inscriptis' settings; inscriptis (and lxml behind it) load only for a step written in HTML."""
    from inscriptis.css_profiles import CSS_PROFILES
    from inscriptis.model.config import ParserConfig

    return ParserConfig(css=CSS_PROFILES["strict"], display_links=True)


def _escaped(value: str | None) -> str | None:
    """A value as autoescaping writes it into HTML (None stays None)."""
    return None if value is None else str(escape(value))


def _value_decides(prefix: str) -> re.Pattern[str]:
    """Markdown around a slot token where the reader's value decides what the template's text makes:
    `*` or `_` next to it (whether emphasis opens or closes depends on her first or last character),
    `&` or `&#` before it (a character reference), or a line starting with it followed by `.` or `)`
    (a number makes an ordered list)."""
    token = re.escape(prefix) + r"\d+z"
    return re.compile(rf"[*_]{token}|{token}[*_]|&#?{token}|(?m:^[^\S\n]*(?:(?:[>*+-]|\d+[.)])[^\S\n]*)*{token}[.)])")


def _value_links(children: list[Token], token: re.Pattern[str]) -> dict[int, str] | None:
    """The links and images whose target is a reader's value: slot number -> the link's words.

    None when only her values could tell what such a link makes: a value in
    a link's words (the text part leaves out a target equal to its words,
    `_inline_text`), or a target that is a value with other text around it
    (whether it is a safe link, and how it is normalised, depends on the
    whole). A target that is one value alone is checked and normalised as a
    whole when filled (`Renderer._filler`), and compared with the words.
    """
    found: dict[int, str] = {}
    opened: list[tuple[str, list[str]]] = []
    for child in children:
        if child.type in ("link_open", "image"):
            target = str(child.attrGet("href") or child.attrGet("src") or "")
            if token.search(target) and not token.fullmatch(target):
                return None
        if child.type == "link_open":
            opened.append((str(child.attrGet("href") or ""), []))
        elif child.type == "link_close" and opened:
            href, words = opened.pop()
            label = "".join(words)
            if token.search(label):
                return None
            whole = token.fullmatch(href)
            if whole is not None:
                found[int(whole.group(1))] = label
            if opened:
                opened[-1][1].append(label)
        elif opened and child.type in ("text", "code_inline"):
            opened[-1][1].append(child.content)
        elif opened and child.type == "image":
            opened[-1][1].append(_words(child))
    return found


def _words(image: Token) -> str:
    """An image's words (its alt text) as parsed: its `content` keeps Markdown's backslashes."""
    return "".join(c.content for c in image.children or [] if c.type in ("text", "code_inline"))


def _in_code(token: Token, prefix: str) -> bool:
    """Whether a slot token stands inside a code span, an indented code block or a fence."""
    if token.type in ("code_block", "fence") and (prefix in token.content or prefix in token.info):
        return True
    return any(child.type == "code_inline" and prefix in child.content for child in token.children or [])


#: characters that may stand for `&` while inscriptis works (see `_html_to_text`): private use
_AMPERSANDS = tuple(chr(code) for code in range(0xE000, 0xE100))


def _html_to_text(html: str) -> str:
    """The plain-text part of an HTML body (links kept as text).

    inscriptis unescapes the text lxml has already decoded once more (and a
    table cell's twice), so a reader named `&copy;` (written `&amp;copy;` in
    the HTML) would read "©", and a link `?a=1&copy=2` would change. Each `&`
    in the parsed tree's text and link targets therefore stands in as a
    private-use character the page does not hold while inscriptis works, and
    is put back after.
    """
    from inscriptis import Inscriptis
    from lxml.etree import ParserError
    from lxml.html import document_fromstring

    if not html.strip():
        return ""
    try:
        tree = document_fromstring(html.strip())
    except ParserError:  # as inscriptis' own `get_text` reads what lxml cannot
        tree = document_fromstring("<pre>" + html.strip() + "</pre>")
    stand_in = next((c for c in _AMPERSANDS if c not in html), None)
    if stand_in is not None:
        for element in tree.iter():
            if isinstance(element.text, str) and "&" in element.text:
                element.text = element.text.replace("&", stand_in)
            if isinstance(element.tail, str) and "&" in element.tail:
                element.tail = element.tail.replace("&", stand_in)
            for name in ("href", "src"):
                value = element.get(name) if isinstance(element.tag, str) else None
                if value is not None and "&" in value:
                    element.set(name, value.replace("&", stand_in))
    text = str(Inscriptis(tree, _text_config()).get_text()).strip()
    return text.replace(stand_in, "&") if stand_in is not None else text


def _hint(exc: JinjaTemplateError) -> str:
    """What to do about a render error, in the words of the template's author."""
    if isinstance(exc, SecurityError):
        return "templates may not reach into Python internals: remove it"
    if isinstance(exc, EmptyValueError):
        return (
            "give it a fallback, e.g. {{ contact.fields.message or '' }} or {{ contact.first_name or 'there' }}, "
            "or wrap it in {% if ... %}...{% endif %}"
        )
    if isinstance(exc, UndefinedError):
        return "define it, or guard it with {% if ... is defined %}"
    return "fix the expression"


def _fix_autolinks(tokens: list[Token], md: MarkdownIt) -> list[Token]:
    """Undo the value escaping inside `<...>` autolinks, where Markdown keeps backslashes."""
    for token in tokens:
        children = token.children or []
        for index, child in enumerate(children[:-2]):
            if child.type != "link_open" or child.markup != "autolink":
                continue
            text = children[index + 1]
            url = _MD_UNESCAPE.sub(r"\1", text.content)
            if url != text.content and md.validateLink(md.normalizeLink(url)):
                child.attrSet("href", md.normalizeLink(url))
                text.content = md.normalizeLinkText(url)
    return tokens


def _syntax_message(folder: str, name: str, exc: TemplateSyntaxError) -> str:
    better = explain_syntax(exc.message or "")
    if better:
        return f"{folder}/{exc.name or name}:{exc.lineno}: {better}"
    return f"{folder}/{exc.name or name}:{exc.lineno}: {plain(exc.message or '')}: check the {{% %}} and {{{{ }}}} tags"


def _line_text(template: Template, line: int) -> str:
    """Line `line` of a template file, for naming what an error is about ("" when unreadable)."""
    if not template.filename:
        return ""
    try:
        with open(template.filename, encoding="utf-8") as handle:
            for number, text in enumerate(handle, 1):
                if number == line:
                    return text
    except OSError:
        pass
    return ""


def _template_line(exc: BaseException, template: Template) -> int:
    """The template line of a render error, from Jinja's rewritten traceback."""
    filename = template.filename
    line = 1
    for frame in traceback.extract_tb(exc.__traceback__):
        if filename and frame.filename == filename and frame.lineno:
            line = frame.lineno
        elif frame.filename == "<template>" and frame.lineno:
            line = frame.lineno
    return line


# --------------------------------------------------------------------------- plain text


def tokens_to_text(tokens: list[Token]) -> str:
    """Readable plain text from markdown-it tokens: links as `text (url)`, lists with dashes."""
    out: list[str] = []
    list_stack: list[list[int]] = []  # [kind, counter] where kind 0 = bullet, 1 = ordered
    for token in tokens:
        kind = token.type
        if kind == "heading_open":
            out.append("")
        elif kind in ("paragraph_close", "heading_close"):
            out.append("\n" if list_stack and token.hidden else "\n\n")
        elif kind == "bullet_list_open":
            list_stack.append([0, 0])
        elif kind == "ordered_list_open":
            list_stack.append([1, int(token.attrGet("start") or 1) - 1])
        elif kind in ("bullet_list_close", "ordered_list_close"):
            list_stack.pop()
            if not list_stack:
                out.append("\n")
        elif kind == "list_item_open":
            indent = "  " * (len(list_stack) - 1)
            top = list_stack[-1]
            if top[0] == 1:
                top[1] += 1
                out.append(f"{indent}{top[1]}. ")
            else:
                out.append(f"{indent}- ")
        elif kind == "list_item_close":
            if out and not out[-1].endswith("\n"):
                out.append("\n")
        elif kind == "hr":
            out.append("----\n\n")
        elif kind in ("fence", "code_block"):
            out.append(token.content + "\n")
        elif kind == "blockquote_open":
            out.append("> ")
        elif kind == "inline":
            out.append(_inline_text(token.children or []))
    text = "".join(out)
    text = re.sub(r"\n{3,}", "\n\n", text)
    return text.strip() + "\n"


def _inline_text(children: list[Token]) -> str:
    parts: list[str] = []
    hrefs: list[tuple[str, int]] = []
    for child in children:
        kind = child.type
        if kind in ("text", "code_inline"):
            parts.append(child.content)
        elif kind == "softbreak":
            parts.append("\n")
        elif kind == "hardbreak":
            parts.append("\n")
        elif kind == "link_open":
            hrefs.append((str(child.attrGet("href") or ""), len(parts)))
        elif kind == "link_close" and hrefs:
            href, start = hrefs.pop()
            label = "".join(parts[start:]).strip()
            if href and href != label and not href.startswith("mailto:" + label):
                parts.append(f" ({href})")
        elif kind == "image":
            parts.append(_words(child))
    return "".join(parts)
