"""Templates: Markdown + Jinja2 (or .html) in the layout, CSS inlined, plus a text part.

Compiled once, as listmonk does (docs/architecture.md, "Rendering, the listmonk way"):
Markdown, the layout and the CSS inliner run at load; per email there is one
sandboxed, autoescaping render of the page, one of the text and one of the subject,
so a reader's value never becomes markup. What a template may not do is refused at
load with its file and line. `{% button URL, "Words" %}` alone on its line is a
table-based button Outlook draws too ("Words: URL" in text).
"""

from __future__ import annotations

import re
import traceback
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache, partial
from typing import Any

import css_inline
from jinja2 import (
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateRuntimeError,
    TemplateSyntaxError,
    Undefined,
    UndefinedError,
)
from jinja2 import TemplateError as JinjaTemplateError
from jinja2.sandbox import SandboxedEnvironment, SecurityError
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from funnel.config import KNOWN_FIELDS, Config, Sequence, Step
from funnel.errors import TemplateError
from funnel.mail.fields import TemplateContact, TemplateWebinar
from funnel.mail.hints import explain, explain_syntax, plain
from funnel.mail.jump import jump_links


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

    def __format__(self, spec: str) -> str:
        raise MissingData(NO_WEBINAR_START)


class _Empty(Undefined):
    """A contact value that is blank for this person: false in `{% if %}` and `or`, an error
    naming it when printed bare (never a blank in an email)."""

    __slots__ = ()

    def __str__(self) -> str:
        raise EmptyValueError(f"{self._undefined_name} is empty for some people")

    def __format__(self, spec: str) -> str:
        return str(self)


def refuse_empty(value: Any) -> Any:
    """`finalize` for every environment: printing None is an error, never a blank."""
    if value is None:
        raise EmptyValueError("this prints an empty value (None)")
    return value


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


#: line breaks of every kind `str.splitlines` knows, and the control characters besides them and tab
_LINE_BREAKS = re.compile(r"[\r\n\v\f\x1c-\x1e\x85\u2028\u2029]+")
_CONTROLS = re.compile(r"[\x00-\x08\x0e-\x1b\x1f\x7f\ud800-\udfff]")


def _one_line(text: str) -> str:
    """A reader's value as an email shows it: on one line, without control characters (or lone
    surrogates, which no email can carry), trimmed; it is printed into running text."""
    if not text.isprintable():
        text = _CONTROLS.sub("", _LINE_BREAKS.sub(" ", text))
    return text.strip()


# --------------------------------------------------------------------------- load: tags and tokens

#: a Jinja tag: a raw block (kept whole), a comment, a statement or a printed value
_TAG = re.compile(r"\{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}|\{#.*?#\}|\{%.*?%\}|\{\{.*?\}\}", re.DOTALL)
_KEYWORD = re.compile(r"\{%-?\s*(\w+)")
_OPENERS = frozenset({"if", "for", "macro", "call", "filter", "block", "with", "autoescape", "trans"})
#: in a `.md` body these would print Markdown that is never parsed (or HTML that is not escaped)
_NOT_IN_MARKDOWN = frozenset({"include", "extends", "import", "from", "macro", "call", "filter", "block"})
_BUTTON = re.compile(r"""^[ \t]*\{%-?\s*button\s+(.+?),\s*("(?:[^"\\\n]|\\.)*"|'(?:[^'\\\n]|\\.)*')\s*-?%\}[ \t]*$""")
#: a line where a statement stands before Markdown's block syntax (it would make the block for some)
_BLOCK_MARK = re.compile(r"(?:#{1,6}(?:\s|$)|[-+*]\s|\d{1,9}[.)]\s|>|```|~~~|=+\s*$|-+\s*$)")
_FENCE = re.compile(r"^ {0,3}(```|~~~)")
_VOID = frozenset({"br", "hr", "img", "input", "meta", "link", "area", "base", "col", "wbr", "source"})

BUTTON_HTML = (
    '<table role="presentation" class="button" border="0" cellpadding="0" cellspacing="0" '
    'style="margin:0 0 16px 0;"><tr>'
    '<td align="center" bgcolor="#3f6f62" style="background-color:#3f6f62;border-radius:6px;padding:12px 24px;">'
    '<a href="{url}" style="color:#ffffff;text-decoration:none;font-family:Helvetica,Arial,sans-serif;'
    'font-size:17px;font-weight:bold;display:inline-block;">{label}</a></td></tr></table>'
)


@dataclass
class _Tag:
    source: str
    where: str
    line: int
    #: "value", "stmt" (a statement) or "raw"
    kind: str
    keyword: str = ""
    group: int = -1


class _Tags:
    """The tags of one page (layout and body), each swapped for the token `<prefix><n>z`."""

    def __init__(self, sources: str) -> None:
        prefix = "fnltag"
        while prefix in sources:
            prefix += "q"
        self.prefix = prefix
        self.tags: list[_Tag] = []
        #: a statement's token between `$` (Markdown reads it as punctuation, as when it prints
        #: nothing: `**Done.**{% if x %}...` still closes the bold), a value's as a word
        self.token = re.compile(rf"\${prefix}(\d+)s\$|{prefix}(\d+)z")
        self.links: set[int] = set()
        #: statement -> the statements of its construct, in order (see `pair`)
        self.groups: dict[int, list[int]] = {}

    def add(self, tag: _Tag) -> str:
        self.tags.append(tag)
        return self.text(len(self.tags) - 1)

    def text(self, number: int) -> str:
        if self.tags[number].kind == "stmt":
            return f"${self.prefix}{number}s$"
        return f"{self.prefix}{number}z"

    def number(self, match: re.Match[str]) -> int:
        return int(match.group(1) or match.group(2))

    def swap(self, source: str, where: str) -> str:
        """`source` with each tag a token (comments dropped, as Jinja drops them)."""

        def one(match: re.Match[str]) -> str:
            text = match.group(0)
            if text.startswith("{#"):
                return ""
            line = source.count("\n", 0, match.start()) + 1
            if text.startswith("{{"):
                return self.add(_Tag(text, where, line, "value"))
            keyword = _KEYWORD.match(text)
            if keyword is None or keyword.group(1) == "raw":
                return self.add(_Tag(text, where, line, "raw"))
            return self.add(_Tag(text, where, line, "stmt", keyword.group(1)))

        return _TAG.sub(one, source)

    def of(self, text: str, kind: str | None = None) -> list[int]:
        numbers = [self.number(match) for match in self.token.finditer(text)]
        return [n for n in numbers if kind is None or self.tags[n].kind == kind]

    def pair(self) -> None:
        """Number each statement's construct (`if`...`elif`...`endif` share one group), and know
        each statement's fellow members (`groups`)."""
        self.lead = re.compile(rf"\s*(?:{self.token.pattern})")
        self.trail = re.compile(rf"(?:{self.token.pattern})\s*\Z")
        open_: list[int] = []
        for index, tag in enumerate(self.tags):
            if tag.kind != "stmt":
                continue
            if tag.keyword in _OPENERS or (tag.keyword == "set" and "=" not in tag.source):
                tag.group = index
                open_.append(index)
            elif tag.keyword in ("elif", "else") and open_:
                tag.group = open_[-1]
            elif tag.keyword.startswith("end") and open_:
                tag.group = open_.pop()
            else:
                tag.group = index
        members: dict[int, list[int]] = {}
        for index, tag in enumerate(self.tags):
            if tag.kind == "stmt":
                members.setdefault(tag.group, []).append(index)
                self.groups[index] = members[tag.group]

    def put_back(self, text: str) -> str:
        """`text` as Jinja source: each token its tag again, braces of the text itself literal."""
        text = re.sub(r"\{(?=[{%#])", "{{ '{' }}", text)

        def one(match: re.Match[str]) -> str:
            number = self.number(match)
            source = self.tags[number].source
            if number in self.links:
                inner = re.match(r"\{\{(-?)(.*?)(-?)\}\}\Z", source, re.DOTALL)
                assert inner is not None
                return f"{{{{{inner.group(1)} ({inner.group(2)})|link {inner.group(3)}}}}}"
            return source

        return self.token.sub(one, text)

    def order(self, html: str) -> list[Any]:
        """The tokens of a page in order, each HTML tag's values as a set (the inliner may reorder
        attributes), its statements in order."""
        found: list[Any] = []
        for match in re.finditer(rf"<[A-Za-z!/$][^>]*>|{self.token.pattern}", html):
            if match.group(0).startswith("<"):
                values = frozenset(self.of(match.group(0), "value"))
                found += [values, *self.of(match.group(0), "stmt")] if values else self.of(match.group(0), "stmt")
            else:
                found.append(self.number(match))
        return found

    def text_links(self, text: str) -> str:
        """The text part's ` (URL)` after a link's words left out when the value is no link."""

        def one(match: re.Match[str]) -> str:
            number = self.number(match)
            if number not in self.links:
                return match.group(0)
            tag = self.tags[number]
            expr = f"({tag.source.strip('{}-').strip()})|link"
            return self.add(_Tag(f"{{% if {expr} %}} ({{{{ {expr} }}}}){{% endif %}}", tag.where, tag.line, "raw"))

        return re.sub(rf" \((?:{self.token.pattern})\)", one, text)

    def fail(self, number: int, message: str) -> TemplateError:
        tag = self.tags[number]
        return TemplateError(f"{tag.where}:{tag.line}: {message}")


def _markdown_source(source: str, tags: _Tags, where: str) -> str:
    """A `.md` body with tokens for tags: a button line made Jinja, each statement alone on its
    line set apart by blank lines (so it stands outside paragraphs), `<{{ url }}>` made a link."""
    lines: list[str] = []
    fence = None
    for number, line in enumerate(source.split("\n"), 1):
        button = _BUTTON.match(line)
        if button and fence is None:
            url = tags.add(_Tag("{{ " + button.group(1) + " }}", where, number, "value"))
            tags.links.add(len(tags.tags) - 1)
            label = tags.add(_Tag("{{ " + button.group(2) + " }}", where, number, "value"))
            lines.append("fnlbutton " + url + " " + label)
            continue
        lines.append(line)
        mark = _FENCE.match(line)
        if mark and (fence is None or fence == mark.group(1)):
            fence = None if fence else mark.group(1)
    swapped = tags.swap("\n".join(lines), where)
    alone = re.compile(rf"^[ \t]*(?:(?:{tags.token.pattern})[ \t]*)+$")
    out: list[str] = []
    for line in swapped.split("\n"):
        if line.startswith("fnlbutton "):
            out += ["", line, ""]
            continue
        stmts = tags.of(line, "stmt")
        for number in stmts:
            tag = tags.tags[number]
            if tag.keyword in _NOT_IN_MARKDOWN or tag.keyword == "set" and "=" not in tag.source:
                raise tags.fail(
                    number,
                    f"{{% {tag.keyword} %}} would print Markdown that is never read as Markdown: "
                    "write the text in the letter itself, or make the letter an .html template",
                )
            if tag.keyword == "button":
                raise tags.fail(number, '{% button URL, "Words" %} must stand alone on its line')
        if stmts and alone.match(line) and not tags.of(line, "value") and not tags.of(line, "raw"):
            out += ["", line.strip(), ""]
            continue
        lead = re.match(rf"[ \t]*(?:(?:{tags.token.pattern})[ \t]*)+", line)
        if lead and tags.of(lead.group(0), "stmt") and _BLOCK_MARK.match(line, lead.end()):
            raise tags.fail(
                tags.of(lead.group(0), "stmt")[0],
                "a {% %} before Markdown's list, heading or "
                "quote mark would make that block for some readers only: put the {% %} on a line "
                "of its own, with a blank line between it and the block",
            )
        out.append(line)
    text = "\n".join(out)
    return re.sub(rf"<({tags.prefix}\d+z)>", lambda m: f"[{m.group(1)}]({m.group(1)})", text)


def _place_statements(tokens: list[Token], tags: _Tags) -> list[Token]:
    """Statements at the edge of a paragraph or heading that belong to a construct outside it go
    outside it, and a paragraph wholly inside one `{% if %}` goes inside it; a paragraph of
    statements alone is unwrapped."""
    out: list[Token] = []
    index = 0
    while index < len(tokens):
        opening = tokens[index]
        index += 1
        if opening.type not in ("paragraph_open", "heading_open") or tokens[index].type != "inline":
            out.append(opening)
            continue
        inline, closing = tokens[index], tokens[index + 1]
        index += 2
        children = inline.children or [Token("text", "", 0)]
        inside = set(tags.of(inline.content, "stmt"))
        movable = partial(_crossing, tags, inside)
        before, after = _take(tags, children[0], True, movable), _take(tags, children[-1], False, movable)
        first, last = _edge(tags, children[0], True), _edge(tags, children[-1], False)
        if first is not None and tags.tags[first].keyword == "if" and tags.groups[first] == [first, last]:
            before += _take(tags, children[0], True, first.__eq__)
            after[:0] = _take(tags, children[-1], False, last.__eq__)
        out += [_statement(tags.text(number)) for number in before]
        if any(c.type != "text" or c.content.strip() for c in children):
            out += [opening, inline, closing]
        out += [_statement(tags.text(number)) for number in after]
    return out


def _crossing(tags: _Tags, inside: set[int], number: int) -> bool:
    """Whether a statement may leave its paragraph: it stands alone, or its construct goes beyond."""
    if tags.tags[number].kind != "stmt":
        return False
    members = tags.groups[number]
    return len(members) == 1 or not set(members) <= inside


def _edge(tags: _Tags, child: Token, at_start: bool) -> int | None:
    """The token at the very start (or end) of a text child, if any."""
    found = tags.lead.match(child.content) if at_start else tags.trail.search(child.content)
    return tags.number(found) if child.type == "text" and found else None


def _take(tags: _Tags, child: Token, at_start: bool, wanted: Callable[[int], bool]) -> list[int]:
    """The statements at the start (or end) of a text child that `wanted` accepts, cut off it."""
    moved: list[int] = []
    while (number := _edge(tags, child, at_start)) is not None and wanted(number):
        moved.append(number)
        text = tags.text(number)
        rest = child.content.lstrip()[len(text) :] if at_start else child.content.rstrip()[: -len(text)]
        child.content = rest.lstrip() if at_start else rest.rstrip()
    return moved if at_start else moved[::-1]


def _statement(text: str) -> Token:
    token = Token("jinja", "", 0)
    token.content = text
    return token


def _check_balance(html: str, tags: _Tags) -> None:
    """Every part of one construct (`if`, `else`, `endif`) stands among the same open elements:
    else the template would make Markdown structure (a paragraph, a list item) for some readers."""
    stack: list[tuple[str, int]] = []
    seen: dict[int, tuple[tuple[str, int], ...]] = {}
    pattern = re.compile(rf"<(/?)([A-Za-z][A-Za-z0-9]*)([^>]*)>|{tags.token.pattern}")
    for match in pattern.finditer(html):
        numbers = [int(match.group(4) or match.group(5))] if not match.group(2) else tags.of(match.group(3))
        for number in numbers:
            tag = tags.tags[number]
            if tag.kind != "stmt":
                continue
            where = seen.setdefault(tag.group, tuple(stack))
            if where != tuple(stack):
                raise tags.fail(
                    number,
                    "this {% %} and the one that opens it stand in different paragraphs, "
                    "lists or headings, which would change the letter's Markdown for some readers: put "
                    "each {% %} on a line of its own, with blank lines around the Markdown it wraps",
                )
        if match.group(2):
            name = match.group(2).lower()
            if match.group(1):
                while stack and stack.pop()[0] != name:
                    pass
            elif name not in _VOID and not match.group(3).endswith("/"):
                stack.append((name, match.start()))


def _check_links(html: str, tags: _Tags) -> None:
    """A value in a link target gets `|link`; it may not choose the scheme with the template's text."""
    for match in re.finditer(r'(?:href|src)="([^"]*)"', html):
        target = match.group(1)
        values = tags.of(target, "value")
        if not values:
            continue
        tags.links.update(values)
        bare = tags.token.sub(lambda m: m.group(0) if tags.tags[tags.number(m)].kind == "value" else "", target)
        first = tags.token.search(bare)
        assert first is not None
        head, rest = bare[: first.start()], bare[first.end() :]
        if (not head and rest and rest[0] not in "/?#") or (head and not re.search(r"[:/?#]", head)):
            raise tags.fail(
                values[0],
                "a value here would choose what kind of link this is: print the whole "
                "address ({{ url }}), or write its start yourself (https://...)",
            )


#: a tag in an HTML source: a value outside quotes, a tag's name, or anything in a style
_HTML_TAG = re.compile(r"""<[A-Za-z!/$][^>"']*(?:(?:"[^"]*"|'[^']*')[^>"']*)*>""")
_STYLE_ATTR = re.compile(r"""\sstyle\s*=\s*("[^"]*"|'[^']*'|\S*)""", re.IGNORECASE)


def _check_html(source: str, where: str) -> None:
    """Refuse an HTML template a reader's value could escape from, naming `where:line`."""
    tags = _Tags(source)
    swapped = tags.swap(source, where)
    quoted = re.compile(r""""[^"]*"|'[^']*'""")
    for tag in _HTML_TAG.finditer(swapped):
        if tag.group(0).startswith("<!--"):
            continue
        if tags.of(quoted.sub("", tag.group(0)), "value"):
            raise tags.fail(
                tags.of(quoted.sub("", tag.group(0)), "value")[0],
                "a value printed inside an HTML "
                'tag must be in a quoted attribute: write title="{{ ... }}" (in a bare one, or as a '
                "tag's name, a value could add attributes)",
            )
        for style in _STYLE_ATTR.finditer(tag.group(0)):
            if tags.of(style.group(1)):
                raise tags.fail(
                    tags.of(style.group(1))[0],
                    "Jinja in a style attribute: the CSS is inlined once "
                    "for everyone, so keep values and conditions out of style (use a class)",
                )
    if named := re.search(rf"<{tags.prefix}\d+z", _HTML_TAG.sub(" ", swapped)):
        raise tags.fail(tags.of(named.group(0))[0], "a value may not name an HTML tag: write the tag's name")
    for style in re.finditer(r"<style\b.*?</style\s*>", swapped, re.DOTALL | re.IGNORECASE):
        if tags.of(style.group(0)):
            raise tags.fail(
                tags.of(style.group(0))[0],
                "Jinja inside <style>: the CSS is inlined once for everyone, so write plain CSS there",
            )


class _CheckedLoader(FileSystemLoader):
    """Template files from a folder; each HTML one is checked (`_check_html`) as it is read."""

    def __init__(self, folder: str, label: str) -> None:
        super().__init__(folder)
        self.label = label

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if environment.autoescape and not template.endswith(".md"):
            _check_html(source, f"{self.label}/{template}")
        return source, filename, uptodate


# --------------------------------------------------------------------------- the renderer


@dataclass(frozen=True)
class _Step:
    """One step compiled: its page, its text, and the files behind them (for error lines)."""

    name: str
    page: Template
    text: Template
    #: an `.html` body on its own, whose text part inscriptis makes per email
    body: Template | None
    #: the body's Jinja as written (a button as Jinja): only rendered to find an error's line
    raw_body: str


@lru_cache(maxsize=1)
def _markdown() -> MarkdownIt:
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.add_render_rule("jinja", lambda self, tokens, idx, options, env: tokens[idx].content)
    return md


def _link(value: Any) -> str:
    """A value printed in a link target, as markdown-it would take it: normalised, and empty when
    markdown-it would not make it a link (`javascript:`, `data:`, ...)."""
    return _checked_link(str(refuse_empty(value)).strip())


@lru_cache(maxsize=4096)
def _checked_link(text: str) -> str:
    md = _markdown()
    url = md.normalizeLink(text)
    return url if md.validateLink(url) else ""


def _body_text(text: str) -> str:
    """The text part's body: paragraphs a statement left empty fold away."""
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


#: the text layout when the project has no layout.txt
_DEFAULT_TEXT = (
    "{{ content }}\n\n--\n{% if not contact.discreet %}{{ practice.name }}\n{% endif %}"
    "{{ practice.postal_address }}\nUnsubscribe with one click: {{ unsubscribe_url }}\n"
)


class Renderer:
    """Every template of one config, compiled once; renders emails on demand.

    `jump_key` signs the neutral links of discreet readers' emails (`funnel.mail.jump`):
    the secret key, for mail that is sent; without it (`funnel check`, a sample
    preview) the links are examples that `funnel serve` does not answer.
    """

    def __init__(self, config: Config, *, jump_key: str | None = None) -> None:
        self.config = config
        self._jump_key = jump_key
        self._jumps = jump_links(config, jump_key)
        self.folder = config.templates_path
        label = config.templates_dir
        self._html_env = self._environment(label, autoescape=True)
        self._text_env = self._environment(label, autoescape=False)
        self._layout_html = self._read("layout.html")
        self._layout_text = self._read("layout.txt", optional=True)
        self._mapped_fields = {
            name for source in config.sources.values() for name in source.columns if name not in KNOWN_FIELDS
        }
        practice = config.practice
        self._discreet_practice = practice.model_copy(
            update={
                "from_name": practice.discreet_from_name or practice.from_name,
                "postal_address": practice.discreet_postal_address or practice.postal_address,
            }
        )
        problems: list[str] = []
        _check_html(self._layout_html, f"{label}/layout.html")
        self._syntax("layout.html", self._layout_html)
        if self._layout_text is not None:
            self._syntax("layout.txt", self._layout_text)
        self._plain_text = _compiled(self._text_env, self._layout_text or _DEFAULT_TEXT)
        self._steps: dict[tuple[str, str], _Step] = {}
        self._subjects: dict[tuple[str, str, bool], Template] = {}
        self._preheaders: dict[tuple[str, str, bool], Template] = {}
        for sid, sequence in config.sequences.items():
            for step in sequence.steps:
                try:
                    self._compile_step(sid, step)
                except TemplateError as exc:
                    problems.append(str(exc))
        if problems:
            raise TemplateError("; ".join(problems))

    def sign_links_with(self, key: str) -> None:
        """Sign discreet readers' links with `key` from now on (a renderer made before the key was read)."""
        if key != self._jump_key:
            self._jumps, self._jump_key = jump_links(self.config, key), key

    # ----------------------------------------------------------------- load

    def _environment(self, label: str, *, autoescape: bool) -> SandboxedEnvironment:
        env = SandboxedEnvironment(
            loader=_CheckedLoader(str(self.folder), label),
            undefined=StrictUndefined,
            autoescape=autoescape,
            keep_trailing_newline=True,
            finalize=refuse_empty,
        )
        env.filters.update(format_date=format_date, format_time=format_time, link=_link, body_text=_body_text)
        return env

    def _read(self, name: str, optional: bool = False) -> Any:
        path = self.folder / name
        try:
            return path.read_text(encoding="utf-8")
        except FileNotFoundError:
            if optional:
                return None
            raise TemplateError(f"{self.config.templates_dir}/{name}: not found: create it (see the README)") from None

    def _syntax(self, name: str, source: str) -> None:
        """Raise a TemplateError naming `name:line` if `source` is not valid Jinja."""
        try:
            self._text_env.compile(source, name)
        except TemplateSyntaxError as exc:
            said = explain_syntax(exc.message or "")
            said = said or f"{plain(exc.message or '')}: check the {{% %}} and {{{{ }}}} tags"
            raise TemplateError(f"{self.config.templates_dir}/{name}:{exc.lineno}: {said}") from None

    def _compile(self, env: SandboxedEnvironment, source: str, files: dict[str, str]) -> Template:
        """Compile a part put together from `files` (name -> source); an error names the file's line."""
        try:
            return _compiled(env, source)
        except TemplateSyntaxError as exc:
            for name, written in files.items():
                self._syntax(name, written)
            raise TemplateError(
                f"{self.config.templates_dir}/{next(iter(files))}: {plain(exc.message or '')}"
            ) from None

    def _compile_step(self, sid: str, step: Step) -> None:
        raw = self._read(step.template)
        jinja = re.sub(r"\{%-?\s*button\s+(.+?),\s*(.+?)\s*-?%\}", r"{{ (\1)|link }} {{ \2 }}", raw)
        try:
            self._text_env.parse(jinja)
        except TemplateSyntaxError:
            self._syntax(step.template, jinja)
        layout_text = self._layout_text or _DEFAULT_TEXT
        label = self.config.templates_dir
        page, text = _sources(label, step.template, raw, self._layout_html, layout_text)
        page_template = self._compile(self._html_env, page, {step.template: jinja, "layout.html": self._layout_html})
        body = None
        if text is None:  # an .html step: its text part is made of its HTML, per email
            body = self._compile(self._html_env, raw, {step.template: raw})
        files = {step.template: jinja, "layout.txt": layout_text}
        text_template = self._plain_text if text is None else self._compile(self._text_env, text, files)
        self._steps[(sid, step.id)] = _Step(step.template, page_template, text_template, body, jinja)
        for discreet in (False, True):
            self._subjects[(sid, step.id, discreet)] = self._heading_template(
                self.subject_source(step, discreet), lambda d=discreet: self._subject_where(sid, step, d)
            )
            preheader = step.discreet_preheader if discreet else step.preheader
            if preheader is not None:
                self._preheaders[(sid, step.id, discreet)] = self._heading_template(
                    preheader, lambda d=discreet: self._preheader_where(sid, step, d)
                )

    def _heading_template(self, source: str, where: Any) -> Template:
        try:
            return _compiled(self._text_env, source)
        except TemplateSyntaxError as exc:
            said = explain_syntax(exc.message or "") or f"{plain(exc.message or '')}: check the {{{{ }}}} braces"
            raise TemplateError(f"{where()}: {said}") from None

    def _preheader_where(self, sid: str, step: Step, discreet: bool) -> str:
        """`sequences.yaml:LINE: preheader of step X in Y`, for errors in a preheader."""
        index = next(i for i, s in enumerate(self.config.sequences[sid].steps) if s.id == step.id)
        key = "discreet_preheader" if discreet else "preheader"
        line = self.config.line_of("sequences", sid, "steps", index, key)
        return f"{self.config.path.name}:{line or 1}: {key} of step {step.id!r} in {sid}"

    def _subject_where(self, sid: str, step: Step, discreet: bool) -> str:
        """`sequences.yaml:LINE: subject of step X in Y`, for errors in a subject."""
        index = next(i for i, s in enumerate(self.config.sequences[sid].steps) if s.id == step.id)
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
        `discreet_preheader` and a plain-text email that starts with it, with each
        of the practice's links as its neutral `/j/` link (`funnel.mail.jump`).
        """
        context = self._context(sequence_id, sequence, step, contact, webinar, unsubscribe_url, discreet)
        key = (sequence_id, step.id, discreet)
        subject = self._heading(self._subjects[key], context, lambda: self._subject_where(sequence_id, step, discreet))
        preheader = ""
        if (template := self._preheaders.get(key)) is not None:
            where = lambda: self._preheader_where(sequence_id, step, discreet)  # noqa: E731
            preheader = self._heading(template, {**context, "subject": subject}, where)
        context["subject"], context["preheader"] = subject, preheader
        compiled = self._steps[(sequence_id, step.id)]
        html = None
        if not discreet:
            html = self._run(compiled.page, context, compiled, "layout.html")
        if compiled.body is not None:
            content = _html_to_text(self._run(compiled.body, context, compiled, step.template))
            context = {**context, "content": content}
        text = self._run(compiled.text, context, compiled, "layout.txt").strip() + "\n"
        if discreet:
            if preheader:
                text = f"{preheader}\n\n{text}"
            text = self._jumps.rewrite(text, self.config.practice.base_url)
        return Rendered(subject=subject, text=text, html=html)

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
        """The template variables: blank values as `_Empty` (falsy; an error when printed bare), a
        missing webinar start `_NoWebinarStart` (using it skips the email), values on one line."""
        if webinar is not None and webinar.start is None:
            webinar = replace(webinar, start=_NoWebinarStart(name="webinar.start"))  # type: ignore[arg-type]
        fields: dict[str, Any] = {name: _Empty(name=f"contact.fields.{name}") for name in self._mapped_fields}
        for name, value in contact.fields.items():
            if isinstance(value, str):
                value = _one_line(value)
            fields[name] = _Empty(name=f"contact.fields.{name}") if value is None or value == "" else value
        first_name = _one_line(contact.first_name or "")
        last_name = _one_line(contact.last_name or "")
        return {
            "contact": TemplateContact(
                email=_one_line(contact.email),
                first_name=first_name or _Empty(name="contact.first_name"),  # type: ignore[arg-type]
                last_name=last_name or _Empty(name="contact.last_name"),  # type: ignore[arg-type]
                fields=fields,
                discreet=discreet,
            ),
            "practice": self._discreet_practice if discreet else self.config.practice,
            "webinar": webinar,
            "unsubscribe_url": unsubscribe_url,
            "sequence": {"id": sequence_id, "name": sequence.name or sequence_id},
            "step": {"id": step.id},
        }

    def _heading(self, template: Template, context: dict[str, Any], where: Any) -> str:
        """A subject or preheader, on one line (runs of white space folded)."""
        return " ".join(self._explained(template, context, where).split())

    def _run(self, template: Template, context: dict[str, Any], step: _Step, part: str) -> str:
        """Render a compiled part; an error is found again in the file it comes from, for its line."""
        try:
            return template.render(context)
        except TemplateError:
            raise  # MissingData and the like already say what is wrong
        except (JinjaTemplateError, ArithmeticError, LookupError, TypeError, ValueError) as exc:
            files = [(step.name, step.raw_body)]
            files += [("layout.html", self._layout_html)] if part == "layout.html" else []
            files += [("layout.txt", self._layout_text)] if part == "layout.txt" and self._layout_text else []
            for file, source in files:
                raw = _compiled(self._text_env, source, file, str(self.folder / file))
                self._explained(raw, {"content": Markup(""), **context}, file)
            raise TemplateError(f"{self.config.templates_dir}/{part}: {plain(str(exc))}: fix the expression") from None

    def _explained(self, template: Template, context: dict[str, Any], name: Any) -> str:
        """Render `template`; an error becomes a TemplateError naming the file and line.

        `name` is the template's file, or for a subject or preheader a function that
        says where it is in sequences.yaml (only worked out when there is an error).
        """
        try:
            return template.render(context)
        except TemplateError:
            raise  # MissingData and the like already say what is wrong
        except (ArithmeticError, LookupError, TypeError, ValueError) as exc:
            message = plain(str(exc)) or "the expression could not be worked out"
            where = name() if callable(name) else f"{self.config.templates_dir}/{name}:{_template_line(exc, template)}"
            raise TemplateError(f"{where}: {message}: fix the expression") from None
        except JinjaTemplateError as exc:
            line = 0 if callable(name) else _template_line(exc, template)
            said = self._said(exc, _line_text(template, line) if line else "")
            where = name() if callable(name) else f"{self.config.templates_dir}/{name}:{line}"
            raise TemplateError(f"{where}: {said}") from None

    def _said(self, exc: JinjaTemplateError, line: str) -> str:
        """The error and what to do, in the author's words (`funnel.mail.hints`), never a class name."""
        message = str(exc.message or exc)
        if not isinstance(exc, SecurityError | EmptyValueError):
            better = explain(message, self.config, line)
            if better:
                return better
        return f"{plain(message)}: {_hint(exc)}"


@lru_cache(maxsize=256)
def _sources(label: str, name: str, raw: str, layout_html: str, layout_text: str) -> tuple[str, str | None]:
    """The Jinja source of a step's page (its body in layout.html, CSS inlined) and, for a Markdown
    step, of its text part (its text in layout.txt); refusals name their file and line."""
    where = f"{label}/{name}"
    tags = _Tags(raw + layout_html + layout_text)
    layout = tags.swap(layout_html, f"{label}/layout.html")
    content = [n for n in tags.of(layout, "value") if re.fullmatch(r"\{\{-?\s*content\s*-?\}\}", tags.tags[n].source)]
    if len(content) != 1:
        raise TemplateError(f"{label}/layout.html: print {{{{ content }}}} once, where the letter goes")
    text = None
    if name.endswith((".html", ".htm")):
        _check_html(raw, where)
        html = tags.swap(raw, where)
    else:
        md = _markdown()
        source = _markdown_source(raw, tags, where)
        tags.pair()
        tokens = _place_statements(md.parse(source), tags)
        button = rf"fnlbutton ({tags.prefix}\d+z) ({tags.prefix}\d+z)"
        html = re.sub(
            f"<p>{button}</p>",
            lambda m: BUTTON_HTML.format(url=m.group(1), label=m.group(2)),
            md.renderer.render(tokens, md.options, {}),
        )
        _check_balance(html, tags)
        _check_links(html, tags)
        body = re.sub(button, r"\2: \1", tags.text_links(tokens_to_text(tokens)))
        text = re.sub(
            r"\{\{-?\s*content\s*-?\}\}",
            lambda _: "{% filter body_text %}" + tags.put_back(body) + "{% endfilter %}",
            layout_text,
        )
    page = layout.replace(tags.text(content[0]), html)
    _check_links(layout, tags)  # in the layout and an .html step too
    _check_links(html, tags)
    expected = tags.order(page)
    try:
        page = str(_inliner().inline(page))
    except css_inline.InlineError as exc:
        raise TemplateError(f"{label}/layout.html: its CSS cannot be read ({exc}): fix the <style>") from None
    if (found := tags.order(page)) != expected:
        moved = next((b for a, b in zip(found, expected, strict=False) if a != b), expected[-1])
        raise tags.fail(
            min(moved) if isinstance(moved, frozenset) else moved,
            "the page's HTML is rewritten around this tag when its CSS is inlined (a tag between a table's "
            "rows, or a {% %} that writes attributes), so it would move: put it inside a cell or around whole "
            "elements",
        )
    return tags.put_back(page), text


@lru_cache(maxsize=1)
def _inliner() -> css_inline.CSSInliner:
    return css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)


#: (environment, source, name) -> compiled code: Renderers of one process compile each source once
_CODE: dict[tuple[Any, str, str | None, str | None], Any] = {}


def _compiled(env: SandboxedEnvironment, source: str, name: str | None = None, filename: str | None = None) -> Template:
    key = (env.autoescape, source, name, filename)
    code = _CODE.get(key)
    if code is None:
        code = env.compile(source, name, filename)
        if len(_CODE) > 4096:
            _CODE.clear()
        _CODE[key] = code
    return env.template_class.from_code(env, code, env.make_globals(None), None)


@lru_cache(maxsize=1)
def _text_config() -> Any:
    """inscriptis' settings; inscriptis (and lxml behind it) load only for a step written in HTML."""
    from inscriptis.css_profiles import CSS_PROFILES
    from inscriptis.model.config import ParserConfig

    return ParserConfig(css=CSS_PROFILES["strict"], display_links=True)


#: characters that may stand for `&` while inscriptis works (see `_html_to_text`): private use
_AMPERSANDS = tuple(chr(code) for code in range(0xE000, 0xE100))


def _html_to_text(html: str) -> str:
    """The plain-text part of an HTML body (links kept as text).

    inscriptis unescapes the text lxml has already decoded once more (and a
    table cell's twice), so `&amp;copy;` would read "©": each `&` stands in as
    a private-use character the page does not hold while inscriptis works.
    """
    from inscriptis import Inscriptis
    from lxml.etree import ParserError
    from lxml.html import document_fromstring

    if not html.strip():
        return ""
    try:
        tree = document_fromstring(html.strip())
    except ParserError:
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
    line = 1
    for frame in traceback.extract_tb(exc.__traceback__):
        if template.filename and frame.filename == template.filename and frame.lineno:
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
        elif kind == "jinja":
            out.append(token.content)
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
        elif kind in ("softbreak", "hardbreak"):
            parts.append("\n")
        elif kind == "link_open":
            hrefs.append((str(child.attrGet("href") or ""), len(parts)))
        elif kind == "link_close" and hrefs:
            href, start = hrefs.pop()
            label = "".join(parts[start:]).strip()
            if href and href != label and not href.startswith("mailto:" + label):
                parts.append(f" ({href})")
        elif kind == "image":
            parts.append("".join(c.content for c in child.children or [] if c.type in ("text", "code_inline")))
    return "".join(parts)
