"""Templates: Markdown + Jinja2 (or .html) inside the layout, CSS inlined, plus a text part.

One `Renderer` is built per run and compiles every template and subject up
front, so a problem surfaces before anything is sent and no email pays for
parsing. Markdown steps are rendered once: Jinja writes Markdown in which
every `{{ value }}` is backslash-escaped (a first name cannot inject a link
or emphasis), markdown-it parses it, and both the HTML and the plain-text
part come from the same token stream. Undefined variables are errors
(StrictUndefined), never blank text in a sent email.
"""

from __future__ import annotations

import re
import traceback
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import css_inline
from inscriptis import get_text
from inscriptis.css_profiles import CSS_PROFILES
from inscriptis.model.config import ParserConfig
from jinja2 import (
    Environment,
    FileSystemLoader,
    StrictUndefined,
    Template,
    TemplateNotFound,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2 import (
    TemplateError as JinjaTemplateError,
)
from markdown_it import MarkdownIt
from markdown_it.token import Token
from markupsafe import Markup

from funnel.config import Config, Sequence, Step
from funnel.errors import TemplateError

_MD_PUNCT = re.compile(r"([\\`*_{}\[\]()#+\-.!<>|~])")
_MD_UNESCAPE = re.compile(r"\\([\\`*_{}\[\]()#+\-.!<>|~])")


def markdown_escape(value: Any) -> Any:
    """Backslash-escape Markdown syntax in a value printed into a Markdown template."""
    if value is None:
        return ""
    if isinstance(value, Markup):
        return value
    return _MD_PUNCT.sub(r"\\\1", str(value))


def format_date(value: datetime | None) -> str:
    """`Thursday, January 14` (the datetime is already in the contact's timezone)."""
    if value is None:
        return ""
    return f"{value:%A, %B} {value.day}"


def format_time(value: datetime | None) -> str:
    """`7:00 PM MST`."""
    if value is None:
        return ""
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
    id: str
    title: str
    join_url: str | None
    replay_url: str | None
    start: datetime | None


@dataclass(frozen=True)
class Rendered:
    subject: str
    text: str
    html: str | None


def _environment(folder: Path, *, autoescape: bool, markdown: bool = False) -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(folder)),
        undefined=StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        finalize=markdown_escape if markdown else None,
    )
    env.filters["format_date"] = format_date
    env.filters["format_time"] = format_time
    return env


class Renderer:
    """Every template of one config, compiled once; renders emails on demand."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.folder = config.templates_path
        self._md_env = _environment(self.folder, autoescape=False, markdown=True)
        self._html_env = _environment(self.folder, autoescape=True)
        self._text_env = _environment(self.folder, autoescape=False)
        self._markdown = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
        self._inliner = css_inline.CSSInliner(keep_style_tags=True, load_remote_stylesheets=False)
        self._text_config = ParserConfig(css=CSS_PROFILES["strict"], display_links=True)
        self.layout_html = self._load(self._html_env, "layout.html")
        self.layout_text = self._load_optional(self._text_env, "layout.txt")
        self._bodies: dict[tuple[str, str], tuple[str, Template]] = {}
        self._subjects: dict[tuple[str, str, bool], Template] = {}
        #: (sequence, step, discreet) -> the step's preheader (discreet: only `discreet_preheader`)
        self._preheaders: dict[tuple[str, str, bool], Template] = {}
        # discreet readers see the sender's discreet name in the From: the signature matches it
        self._discreet_practice = config.practice.model_copy(
            update={"from_name": config.practice.discreet_from_name or config.practice.from_name}
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

    # ----------------------------------------------------------------- compile

    def _load(self, env: Environment, name: str) -> Template:
        try:
            return env.get_template(name)
        except TemplateNotFound:
            raise TemplateError(f"{self.config.templates_dir}/{name}: not found: create it (see the README)") from None
        except TemplateSyntaxError as exc:
            raise TemplateError(_syntax_message(self.config.templates_dir, name, exc)) from None

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
                self._subjects[(sid, step.id, discreet)] = self._text_env.from_string(source)
            except TemplateSyntaxError as exc:
                raise TemplateError(
                    f"{self._subject_where(sid, step, discreet)}: {exc.message}: check the {{{{ }}}} braces"
                ) from None
            preheader = step.discreet_preheader if discreet else step.preheader
            if preheader is None:
                continue
            try:
                self._preheaders[(sid, step.id, discreet)] = self._text_env.from_string(preheader)
            except TemplateSyntaxError as exc:
                raise TemplateError(
                    f"{self._preheader_where(sid, step, discreet)}: {exc.message}: check the {{{{ }}}} braces"
                ) from None

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
        """
        if contact.discreet != discreet:
            contact = replace(contact, discreet=discreet)
        context: dict[str, Any] = {
            "contact": contact,
            "practice": self._discreet_practice if discreet else self.config.practice,
            "webinar": webinar,
            "unsubscribe_url": unsubscribe_url,
            "sequence": {"id": sequence_id, "name": sequence.name or sequence_id},
            "step": {"id": step.id},
        }
        kind, body = self._bodies[(sequence_id, step.id)]
        subject_template = self._subjects[(sequence_id, step.id, discreet)]
        subject = " ".join(
            self._run(subject_template, context, self._subject_where(sequence_id, step, discreet)).split()
        )
        context["subject"] = subject
        preheader_template = self._preheaders.get((sequence_id, step.id, discreet))
        context["preheader"] = (
            " ".join(self._run(preheader_template, context, self._preheader_where(sequence_id, step, discreet)).split())
            if preheader_template is not None
            else ""
        )
        if kind == "md":
            source = self._run(body, context, step.template)
            tokens = _fix_autolinks(self._markdown.parse(source), self._markdown)
            html_body = Markup(self._markdown.renderer.render(tokens, self._markdown.options, {}))
            text_body = tokens_to_text(tokens)
        else:
            html_body = Markup(self._run(body, context, step.template))
            text_body = get_text(str(html_body), self._text_config).strip()
        text = self._wrap_text(text_body, context)
        if discreet and context["preheader"]:
            # a text-only email's inbox preview is its first line: the neutral preheader
            text = f"{context['preheader']}\n\n{text}"
        html = None
        if not discreet:
            html = self._inliner.inline(self._run(self.layout_html, {**context, "content": html_body}, "layout.html"))
        return Rendered(subject=subject, text=text, html=html)

    def _wrap_text(self, body: str, context: dict[str, Any]) -> str:
        if self.layout_text is None:
            practice = self.config.practice
            name = "" if context["contact"].discreet else f"{practice.name}\n"  # a neutral footer for her
            return (
                f"{body.rstrip()}\n\n--\n{name}{practice.postal_address}\n"
                f"Unsubscribe with one click: {context['unsubscribe_url']}\n"
            )
        return self._run(self.layout_text, {**context, "content": body.rstrip()}, "layout.txt").strip() + "\n"

    def _run(self, template: Template, context: dict[str, Any], name: str) -> str:
        try:
            return template.render(context)
        except JinjaTemplateError as exc:
            hint = (
                "define it, or guard it with {% if ... is defined %}"
                if isinstance(exc, UndefinedError)
                else "fix the expression"
            )
            if template.name is None:  # a subject: `name` already says file, line and step
                raise TemplateError(f"{name}: {exc.message or exc}: {hint}") from None
            line = _template_line(exc, template)
            raise TemplateError(f"{self.config.templates_dir}/{name}:{line}: {exc.message or exc}: {hint}") from None


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
    return f"{folder}/{exc.name or name}:{exc.lineno}: {exc.message}: check the {{% %}} and {{{{ }}}} tags"


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
            parts.append(child.content)
    return "".join(parts)
