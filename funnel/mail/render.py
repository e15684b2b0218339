"""Templates: Markdown + Jinja2 (or .html) in the layout, CSS inlined, plus a text part.

Compiled once, as listmonk does: at load `funnel.mail.compile` turns each
step's body and `layout.html` into one Jinja source (markdown-it and the CSS
inliner run once, and what a template may not do is refused there with its
file and line), and the Renderer compiles it. Per email there is one
sandboxed, autoescaping render of the page, one of the text
(`funnel.mail.plaintext`) and one of the subject: a reader's value never
meets Markdown or the inliner, so it can never become markup.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime
from functools import lru_cache
from typing import Any

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
from markupsafe import Markup

from funnel.config import KNOWN_FIELDS, Config, Sequence, Step
from funnel.errors import TemplateError
from funnel.mail.compile import button_as_jinja, check_html, markdown, step_sources
from funnel.mail.fields import TemplateContact, TemplateWebinar
from funnel.mail.hints import explain, explain_syntax, line_text, plain, template_line
from funnel.mail.jump import jump_links
from funnel.mail.plaintext import body_text, html_to_text


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


class _CheckedLoader(FileSystemLoader):
    """Template files from a folder; each HTML one is checked (`check_html`) as it is read."""

    def __init__(self, folder: str, label: str) -> None:
        super().__init__(folder)
        self.label = label

    def get_source(self, environment: Any, template: str) -> tuple[str, str, Callable[[], bool]]:
        source, filename, uptodate = super().get_source(environment, template)
        if environment.autoescape and not template.endswith(".md"):
            check_html(source, f"{self.label}/{template}")
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


def _link(value: Any) -> str:
    """A value printed in a link target, as markdown-it would take it: normalised, and empty when
    markdown-it would not make it a link (`javascript:`, `data:`, ...)."""
    return _checked_link(str(refuse_empty(value)).strip())


@lru_cache(maxsize=4096)
def _checked_link(text: str) -> str:
    md = markdown()
    url = md.normalizeLink(text)
    return url if md.validateLink(url) else ""


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
        check_html(self._layout_html, f"{label}/layout.html")
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
        env.filters.update(format_date=format_date, format_time=format_time, link=_link, body_text=body_text)
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
        jinja = button_as_jinja(raw)
        try:
            self._text_env.parse(jinja)
        except TemplateSyntaxError:
            self._syntax(step.template, jinja)
        layout_text = self._layout_text or _DEFAULT_TEXT
        label = self.config.templates_dir
        page, text = step_sources(label, step.template, raw, self._layout_html, layout_text)
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
            content = html_to_text(self._run(compiled.body, context, compiled, step.template))
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
            where = name() if callable(name) else f"{self.config.templates_dir}/{name}:{template_line(exc, template)}"
            raise TemplateError(f"{where}: {message}: fix the expression") from None
        except JinjaTemplateError as exc:
            line = 0 if callable(name) else template_line(exc, template)
            said = self._said(exc, line_text(template, line) if line else "")
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
