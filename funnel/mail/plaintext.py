"""The plain-text part of an email, made from the same letter as its HTML.

A Markdown letter's text comes from the markdown-it tokens once, at load
(`tokens_to_text`: links as `words (url)`, lists with dashes), and is put in
`layout.txt`; per email `body_text` folds the paragraphs a `{% if %}` left
empty. A letter written in HTML has its text made per email from the rendered
HTML by inscriptis (`html_to_text`), which loads only when such a letter exists.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any

from markdown_it.token import Token


def body_text(text: str) -> str:
    """The text part's body: paragraphs a statement left empty fold away."""
    while "\n\n\n" in text:
        text = text.replace("\n\n\n", "\n\n")
    return text.strip()


@lru_cache(maxsize=1)
def _text_config() -> Any:
    """inscriptis' settings; inscriptis (and lxml behind it) load only for a step written in HTML."""
    from inscriptis.css_profiles import CSS_PROFILES
    from inscriptis.model.config import ParserConfig

    return ParserConfig(css=CSS_PROFILES["strict"], display_links=True)


#: characters that may stand for `&` while inscriptis works (see `html_to_text`): private use
_AMPERSANDS = tuple(chr(code) for code in range(0xE000, 0xE100))


def html_to_text(html: str) -> str:
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
