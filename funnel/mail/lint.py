"""`funnel check`'s second look: what is valid YAML and renders, yet reads wrong.

Each check returns problems as `file:line: message` with what to do: a fixed-offset
zone where a city is meant (`zone_problems`), a `webinar:` offset whose sign does not
fit its place (`webinar_sign_problems`), a `contact.fields.X` no source of the
sequence maps (`field_problems`), a step id that looks renamed (`rename_problems`).
Each check's own docstring says what it looks for and why.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from typing import Any
from zoneinfo import ZoneInfo

from jinja2 import Environment, nodes

from funnel.config import KNOWN_FIELDS, Config, Sequence, Step

#: zone names that are a fixed offset or a legacy US rule, and the city a practice most likely means
CITY_FOR = {
    "EST": "America/New_York",
    "EST5EDT": "America/New_York",
    "CST6CDT": "America/Chicago",
    "MST": "America/Denver (or America/Phoenix, which keeps no summer time)",
    "MST7MDT": "America/Denver",
    "PST8PDT": "America/Los_Angeles",
    "HST": "Pacific/Honolulu",
}
_ETC_OFFSET = re.compile(r"^Etc/GMT[+-]\d{1,2}$", re.IGNORECASE)


# --------------------------------------------------------------------------- zones


def zone_problems(config: Config) -> list[str]:
    """Fixed-offset and legacy zone names in the practice and the webinars.

    A fixed-offset or legacy zone (`MST`, `EST`, `MST7MDT`, `Etc/GMT+7`) where a
    city is meant: `MST` never moves to summer time, so from March to November
    every letter would go an hour off in Denver.
    """
    places: list[tuple[tuple[Any, ...], str]] = [(("practice", "timezone"), config.practice.timezone)]
    places += [(("webinars", wid, "timezone"), w.timezone) for wid, w in config.webinars.items() if w.timezone]
    problems = []
    for path, name in places:
        advice = fixed_zone_advice(name)
        if advice:
            line = config.line_of(*path) or 1
            problems.append(f"{config.path.name}:{line}: {'.'.join(map(str, path))}: {advice}")
    return problems


def fixed_zone_advice(name: str) -> str | None:
    """What to write instead of a fixed-offset or legacy zone name; None for a city's zone."""
    clean = name.strip()
    upper = clean.upper()
    if upper in CITY_FOR:
        kind = "a fixed offset with no summer time" if upper in ("EST", "MST", "HST") else "a legacy zone name"
        return f"{clean} is {kind}: write the city's zone, e.g. {CITY_FOR[upper]}"
    if _ETC_OFFSET.match(clean):
        offset = ZoneInfo(clean).utcoffset(None)
        hours = int(offset.total_seconds() // 3600) if offset is not None else 0
        return (
            f"{clean} is a fixed offset (UTC{hours:+d} all year, no summer time; Etc/ signs are reversed): "
            "write the city's zone, e.g. America/Denver"
        )
    return None


# --------------------------------------------------------------------------- webinar offsets


def webinar_sign_problems(config: Config) -> list[str]:
    """`webinar:` offsets whose sign does not fit their place in the sequence.

    A sign that does not fit the sequence's other webinar-timed steps (`+1d`
    between `-1h`... steps, written in order) or the step's id (`day-before: +1d`).
    """
    problems = []
    for sid, sequence in config.sequences.items():
        timed = [(i, s) for i, s in enumerate(sequence.steps) if s.webinar is not None]
        for position, (index, step) in enumerate(timed):
            offset = _minutes(step)
            if offset == 0:
                continue
            before = [_minutes(s) for _i, s in timed[:position]]
            after = [_minutes(s) for _i, s in timed[position + 1 :]]
            low, high = max(before, default=None), min(after, default=None)
            fits = (low is None or offset >= low) and (high is None or offset <= high)
            flipped_fits = (low is None or -offset >= low) and (high is None or -offset <= high)
            words = step.id.lower().replace("_", "-").split("-")
            reason = None
            if not fits and flipped_fits:
                if low is not None and offset < low:  # the latest step above it comes later than it does
                    where, neighbour = "after", max((s for _i, s in timed[:position]), key=_minutes)
                else:  # the earliest step below it comes earlier than it does
                    where, neighbour = "before", min((s for _i, s in timed[position + 1 :]), key=_minutes)
                reason = f"it stands {where} {neighbour.id!r} (webinar: {_signed(neighbour)})"
            elif offset > 0 and "before" in words:
                reason = f"its id {step.id!r} says before"
            elif offset < 0 and "after" in words:
                reason = f"its id {step.id!r} says after"
            if reason:
                line = config.line_of("sequences", sid, "steps", index, "webinar") or 1
                flip = ("-" if offset > 0 else "+") + _signed(step)[1:]
                meaning = "after" if offset > 0 else "before"
                problems.append(
                    f"{config.path.name}:{line}: step {step.id!r} in {sid}: webinar: {_signed(step)} means "
                    f"{meaning} the webinar starts, but {reason}: did you mean webinar: {flip}?"
                )
    return problems


def _minutes(step: Step) -> int:
    assert step.webinar is not None
    return step.webinar.days * 24 * 60 + step.webinar.minutes


def _signed(step: Step) -> str:
    assert step.webinar is not None
    text = str(step.webinar)
    return text if text.startswith("-") else "+" + text


# --------------------------------------------------------------------------- contact.fields


def field_problems(config: Config, env: Environment) -> list[str]:
    """`contact.fields.X` in a sequence's letters that none of its sources maps.

    The sources of a sequence are those that enroll into it, or into a sequence
    whose `next:` leads to it. A field none of them maps would always be empty
    for its readers.
    """
    problems = []
    for sid, sequence in config.sequences.items():
        sources = feeding_sources(config, sid)
        if not sources:
            continue  # nobody is enrolled into it: nobody reads it
        mapped = {name for s in sources for name in config.sources[s].columns if name not in KNOWN_FIELDS}
        which = ", ".join(sources)
        for index, step in enumerate(sequence.steps):
            for where, line, field in _step_fields(config, env, sid, index, step):
                if field in mapped:
                    continue
                others = sorted(mapped)
                has = f"they map {', '.join(others)}" if others else "they map no extra fields"
                close = difflib.get_close_matches(field, others, n=1, cutoff=0.6)
                guess = f"did you mean contact.fields.{close[0]}? Or " if close else ""
                problems.append(
                    f"{where}:{line}: contact.fields.{field}: no source of {sid} maps {field!r} "
                    f"(its sources: {which}; {has}), so it is always empty for its readers: "
                    f"{guess}map it in one of them ({field}: Column Header), or remove it"
                )
    return problems


def feeding_sources(config: Config, sid: str) -> list[str]:
    """The sources whose people reach sequence `sid`: enrolled into it, or into one whose `next:` leads there."""
    reaching = {sid}
    changed = True
    while changed:
        changed = False
        for other, sequence in config.sequences.items():
            if sequence.next in reaching and other not in reaching:
                reaching.add(other)
                changed = True
    return [name for name, source in config.sources.items() if source.enroll in reaching]


def _step_fields(config: Config, env: Environment, sid: str, index: int, step: Step) -> Iterator[tuple[str, int, str]]:
    """(file, line, field) for each contact.fields.X in a step's letter, its includes, subject and preheaders."""
    seen: set[str] = set()
    todo = [step.template]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        path = config.templates_path / name
        try:
            tree = env.parse(path.read_text(encoding="utf-8"))
        except Exception:  # unreadable, or a syntax error: the render check reports those
            continue
        for line, field in _fields_in(tree):
            yield f"{config.templates_dir}/{name}", line, field
        for include in tree.find_all(nodes.Include):
            if isinstance(include.template, nodes.Const) and isinstance(include.template.value, str):
                todo.append(include.template.value)
    for key in ("subject", "discreet_subject", "preheader", "discreet_preheader"):
        text = getattr(step, key, None)
        if not text:
            continue
        try:
            tree = env.parse(text)
        except Exception:
            continue
        line = config.line_of("sequences", sid, "steps", index, key) or 1
        for _line, field in _fields_in(tree):
            yield config.path.name, line, field


def _fields_in(tree: nodes.Template) -> Iterator[tuple[int, str]]:
    """(line, name) of `contact.fields.NAME`, `contact.fields['NAME']` and `contact.fields.get('NAME')`."""
    for node in tree.find_all((nodes.Getattr, nodes.Getitem, nodes.Call)):
        if isinstance(node, nodes.Getattr) and _is_fields(node.node) and node.attr not in ("get", "items", "keys"):
            yield node.lineno, node.attr
        elif isinstance(node, nodes.Getitem) and _is_fields(node.node) and isinstance(node.arg, nodes.Const):
            if isinstance(node.arg.value, str):
                yield node.lineno, node.arg.value
        elif (
            isinstance(node, nodes.Call)
            and isinstance(node.node, nodes.Getattr)
            and node.node.attr == "get"
            and _is_fields(node.node.node)
            and node.args
            and isinstance(node.args[0], nodes.Const)
            and isinstance(node.args[0].value, str)
        ):
            yield node.lineno, node.args[0].value


def _is_fields(node: nodes.Node) -> bool:
    return (
        isinstance(node, nodes.Getattr)
        and node.attr == "fields"
        and isinstance(node.node, nodes.Name)
        and node.node.name == "contact"
    )


# --------------------------------------------------------------------------- renamed steps


def rename_problems(config: Config, before: dict[str, list[dict[str, Any]]] | None) -> list[str]:
    """Step ids that look renamed since the config the last run used (`before`: its snapshot).

    A step id that vanished since the last run while a new one with the same
    template (or, in an older snapshot without templates, the same place and
    timing) appeared: a renamed id is a new step (spec 3.1: steps are matched by id).
    """
    if not before:
        return []
    problems = []
    for sid, sequence in config.sequences.items():
        old_steps = before.get(sid) or []
        old_ids = {s.get("id") for s in old_steps}
        gone = [(i, s) for i, s in enumerate(old_steps) if s.get("id") not in {x.id for x in sequence.steps}]
        for index, step in enumerate(sequence.steps):
            if step.id in old_ids:
                continue
            match = _renamed_from(sequence, step, index, gone)
            if match is None:
                continue
            line = config.line_of("sequences", sid, "steps", index, "id") or 1
            problems.append(
                f"{config.path.name}:{line}: step {step.id!r} in {sid} looks like {match!r} renamed "
                f"(the last run had {match!r} with the same {_same(old_steps, match)}): a step's id is its "
                f"permanent name, and a new id is a new step: people who already got {match!r} could get this "
                f"email again. Put back id: {match}, and change its subject or template instead"
            )
    return problems


def _renamed_from(sequence: Sequence, step: Step, index: int, gone: list[tuple[int, dict[str, Any]]]) -> str | None:
    for old_index, old in gone:
        if old.get("template"):
            if old["template"] == step.template:
                return str(old.get("id"))
        elif old_index == index and _timing(old) == _timing_of(step):
            return str(old.get("id"))
    return None


def _same(old_steps: list[dict[str, Any]], step_id: str) -> str:
    old = next(s for s in old_steps if s.get("id") == step_id)
    return "template" if old.get("template") else "place and timing"


def _timing(old: dict[str, Any]) -> tuple[Any, ...]:
    return (old.get("wait"), old.get("webinar"), old.get("at"), bool(old.get("transactional")))


def _timing_of(step: Step) -> tuple[Any, ...]:
    return (
        str(step.wait) if step.wait is not None else None,
        str(step.webinar) if step.webinar is not None else None,
        step.at.strftime("%H:%M") if step.at else None,
        step.transactional,
    )


def last_snapshot(config: Config) -> dict[str, list[dict[str, Any]]] | None:
    """The step snapshot of the last finished run, read without creating or migrating anything; None: none."""
    import json
    from pathlib import Path

    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import SQLAlchemyError

    from funnel.store.db import database_url

    url = database_url(config.folder)
    try:
        parsed = make_url(url)
    except Exception:
        return None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database or parsed.database == ":memory:" or not Path(parsed.database).is_file():
            return None  # no database yet: nothing ran, nothing to compare with (and none is made here)
    elif parsed.drivername == "postgresql":
        parsed = parsed.set(drivername="postgresql+psycopg")
    try:
        engine = create_engine(parsed, hide_parameters=True)
    except Exception:
        return None
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT config_timing FROM runs WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1")
            ).first()
    except SQLAlchemyError:
        return None  # an older or unreachable database: the other checks still run
    finally:
        engine.dispose()
    if row is None or row[0] is None:
        return None
    value = row[0] if isinstance(row[0], dict) else json.loads(row[0])
    return value if isinstance(value, dict) else None
