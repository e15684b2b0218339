"""What a letter's template may do, decided once when the templates are loaded.

Each `{{ }}` / `{% %}` of a body becomes an inert token, markdown-it runs once
over a `.md` body, the body goes into `layout.html`, the CSS is inlined and the
tags go back: the Jinja source the renderer compiles. What a template may not
do is refused here with its file and line: a value choosing a link's scheme,
Jinja making Markdown structure for some readers only, values in `style`.
`{% button URL, "Words" %}` alone on its line is a table-based button Outlook
draws too ("Words: URL" in the text part).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache, partial
from typing import Any

import css_inline
from markdown_it import MarkdownIt
from markdown_it.token import Token

from funnel.errors import TemplateError
from funnel.mail.plaintext import tokens_to_text

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


def button_as_jinja(raw: str) -> str:
    """A body's Jinja as written, each button the two values it prints: only rendered to find an
    error's line (the `link` filter is the renderer's)."""
    return re.sub(r"\{%-?\s*button\s+(.+?),\s*(.+?)\s*-?%\}", r"{{ (\1)|link }} {{ \2 }}", raw)


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


def check_html(source: str, where: str) -> None:
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


@lru_cache(maxsize=1)
def markdown() -> MarkdownIt:
    """funnel's one markdown-it: CommonMark without raw HTML; a `jinja` token prints its statement."""
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    md.add_render_rule("jinja", lambda self, tokens, idx, options, env: tokens[idx].content)
    return md


@lru_cache(maxsize=256)
def step_sources(label: str, name: str, raw: str, layout_html: str, layout_text: str) -> tuple[str, str | None]:
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
        check_html(raw, where)
        html = tags.swap(raw, where)
    else:
        md = markdown()
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
