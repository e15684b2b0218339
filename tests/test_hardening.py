"""Hostile input, thrown at every parser: a clear error or a clean accept, never a traceback.

Hypothesis makes exports (CSV and JSONL, as bytes in odd encodings), values
substituted into sequences.yaml, and form posts to a real `funnel serve`.
Each property checks the contract of the parser it feeds:

- a signup file: `SourceError` naming the file, or a `FileRead` whose problems
  carry line numbers of the file; what is accepted is stored whole (contact,
  tags and enrollment from the same row) in a real SQLite file;
- sequences.yaml: it loads, or `ConfigError` whose every problem starts with
  `sequences.yaml:LINE:`; what loads survives `funnel check` and
  `funnel run --dry-run` without an unexpected error;
- a form post: 2xx, 303 or 4xx, never 5xx; what was accepted is stored.

Example counts stay modest so that the suite stays fast (it runs twice in CI).
"""

from __future__ import annotations

import codecs
import copy
import json
import re
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from click.testing import CliRunner
from conftest import REPO, SECRET
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from itsdangerous import URLSafeSerializer
from ruamel.yaml import YAML
from sqlmodel import Session

from funnel.cli import cli
from funnel.config import load_config
from funnel.errors import ConfigError, SourceError
from funnel.mail.unsubscribe import Tokens
from funnel.signups.sources import EARLIEST_START, LATEST_START, FileRead, read_source_file
from funnel.signups.store import apply_rows
from funnel.store.db import make_engine
from funnel.text import email_hash
from funnel.timeutil import zone

NOW = datetime(2026, 12, 8, 16, 0, tzinfo=UTC)
NOW_TEXT = "2026-12-08T16:00:00Z"
SETTINGS = settings(
    max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\ufeff]")

# --------------------------------------------------------------------------- strategies

#: values a hostile or broken export really carries
ODD_VALUES = [
    "",
    " ",
    '"',
    '""',
    '"unterminated',
    ",",
    ";",
    "\t",
    "\r",
    "\n",
    "\r\n",
    "\x00",
    "\x1b[31m",
    "\ufeff",
    "\u2028",
    "\u202e",
    "9999-12-31 23:59",
    "9999-12-31T23:59:59+14:00",
    "0001-01-01",
    "1969-12-31 23:59",
    "2099-12-31 23:59",
    "2100-01-01 00:00",
    "2027-01-14 19:00",
    "yesterday",
    "1e308",
    "-1",
    "America/Denver",
    "Not/AZone",
    "../../etc/localtime",
    "A" * 5000,
    "Europe/" + "x" * 5000,
    "yes",
    "no",
    "maybe",
    "ana@example.test",
    "ANA@EXAMPLE.TEST",
    "bé@example.test",
    "ana@bücher.test",
    "a@b",
    "@example.test",
    "ana@@example.test",
    "x" * 65 + "@example.test",
    "ana@example.test\nbob@example.test",
    '"ana@example.test"',
    "<script>alert(1)</script>",
    "{{ 7*7 }}",
]
values = st.one_of(
    st.sampled_from(ODD_VALUES), st.text(max_size=40), st.text(alphabet='\r\n",;\t\x00ab@.', max_size=12)
)
emails = st.one_of(
    st.builds(lambda n: f"user{n}@example.test", st.integers(0, 30)),
    st.sampled_from([v for v in ODD_VALUES if "@" in v]),
)

CSV_HEADER = ["Email", "First Name", "Last Name", "Webinar Start", "Time Zone", "Discreet"]


def _csv_cell(value: str, delimiter: str, quote: bool) -> str:
    if quote:
        return '"' + value.replace('"', '""') + '"'
    return value


@st.composite
def csv_files(draw: st.DrawFn) -> bytes:
    """A registrations export, as bytes: odd cells, quotes, delimiters, endings, BOMs and encodings."""
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    header = draw(st.permutations(CSV_HEADER))
    extra = draw(st.lists(st.sampled_from(["Email", "email ", "Attended", "", '"Q"']), max_size=2))
    lines = [delimiter.join(_csv_cell(h, delimiter, draw(st.booleans())) for h in [*header, *extra])]
    for _ in range(draw(st.integers(0, 6))):
        cells = [draw(emails) if h == "Email" and draw(st.booleans()) else draw(values) for h in header]
        cells += [draw(values) for _ in range(draw(st.integers(0, len(extra) + 2)))]
        quoted = [_csv_cell(c, delimiter, draw(st.booleans())) for c in cells]
        line = delimiter.join(quoted)
        lines.append(line)
        lines.append("") if draw(st.integers(0, 5)) == 0 else None
    text = draw(st.sampled_from([ending, "\n", "\r\n"])).join(lines)
    if draw(st.booleans()):
        text += ending
    return _encode(draw, text)


def _encode(draw: st.DrawFn, text: str) -> bytes:
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "cp1252", "latin-1", "raw"]))
    if encoding == "raw":
        return draw(st.binary(max_size=300))
    data = text.encode(encoding, errors="replace")
    if encoding == "utf-16-be" and draw(st.booleans()):
        data = codecs.BOM_UTF16_BE + data
    if draw(st.integers(0, 8)) == 0:  # a stray byte somewhere
        at = draw(st.integers(0, len(data)))
        data = data[:at] + draw(st.binary(min_size=1, max_size=3)) + data[at:]
    return data


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | values,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@st.composite
def jsonl_files(draw: st.DrawFn) -> bytes:
    """A consultation-requests export: objects with odd values, duplicate keys, and garbage lines."""
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        kind = draw(st.integers(0, 4))
        if kind == 0:
            lines.append(draw(values))
            continue
        keys = draw(
            st.lists(st.sampled_from(["email", "Email", " EMAIL", "name", "message", "discreet", "x"]), max_size=6)
        )
        pairs = [(k, draw(emails) if k.strip().lower() == "email" else draw(json_values)) for k in keys]
        body = ", ".join(f"{json.dumps(k)}: {json.dumps(v, ensure_ascii=draw(st.booleans()))}" for k, v in pairs)
        lines.append("{" + body + "}" if kind != 1 else "[" + body + "]")
    ending = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    text = ending.join(lines) + (ending if draw(st.booleans()) else "")
    return _encode(draw, text)


# --------------------------------------------------------------------------- files -> database


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The shipped project once, and a migrated, empty database to copy for each example."""
    root = tmp_path_factory.mktemp("hostile")
    shutil.copy(REPO / "sequences.yaml", root / "sequences.yaml")
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    (root / "signups").mkdir()
    make_engine(f"sqlite:///{root / 'empty.db'}").dispose()
    yield root


def _read(root: Path, source_name: str, data: bytes, settle: float = 0) -> tuple[FileRead | SourceError, int]:
    config = load_config(root / "sequences.yaml")
    source = config.sources[source_name]
    path = root / f"export-{source_name}.{source.format}"
    path.write_bytes(data)
    try:
        read = read_source_file(source_name, source, path, zone(config.practice.timezone), None, settle_seconds=settle)
    except SourceError as exc:
        assert path.name in str(exc), f"the error names the file: {exc}"
        return exc, 0
    lines = max(1, len(re.findall(r"\r\n|\r|\n", data.decode("latin-1"))) + 1)
    return read, lines


def _check_read(read: FileRead, lines: int) -> None:
    rejected = {p.line for p in read.problems if not p.warning}
    for problem in read.problems:
        assert 1 <= problem.line <= lines, problem
        assert problem.message and "Traceback" not in problem.message
    for row in read.rows:
        assert 1 <= row.line <= lines
        assert row.line not in rejected, f"line {row.line} both accepted and rejected"
        assert row.email == row.email.lower() and row.email.isascii() and not _CONTROL.search(row.email)
        for name in (row.first_name, row.last_name, row.timezone):
            assert name is None or not _CONTROL.search(name)
        if row.webinar_start is not None:
            assert EARLIEST_START <= row.webinar_start < LATEST_START


def _store(root: Path, source_name: str, read: FileRead) -> None:
    """apply_rows into a fresh copy of the empty database, then check it is whole."""
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "funnel.db"
        shutil.copy(root / "empty.db", db)
        config = load_config(root / "sequences.yaml")
        source = config.sources[source_name]
        engine = make_engine(f"sqlite:///{db}")
        try:
            with Session(engine) as session:
                apply_rows(session, config, source_name, source, read.rows, NOW)
                session.commit()
        finally:
            engine.dispose()
        _check_database(db, {email_hash(r.email) for r in read.rows}, source.tags, source.enroll)


def _check_database(db: Path, accepted: set[str], tags: tuple[str, ...] | list[str], enroll: str | None) -> None:
    with sqlite3.connect(db) as conn:
        contacts = dict(conn.execute("SELECT email_hash, id FROM contacts"))
        assert set(contacts) == accepted, "every accepted row has its contact, and nothing else is there"
        for key in accepted:
            have = {t for (t,) in conn.execute("SELECT tag FROM tags WHERE contact_id = ?", (contacts[key],))}
            assert set(tags) <= have, "a contact without the tags of her row"
            if enroll:
                count = conn.execute(
                    "SELECT count(*) FROM enrollments WHERE contact_id = ? AND sequence = ?", (contacts[key], enroll)
                ).fetchone()[0]
                assert count == 1, "a contact without the enrollment of her row"
        orphans = (
            conn.execute("SELECT count(*) FROM tags WHERE contact_id NOT IN (SELECT id FROM contacts)").fetchone()[0]
            + conn.execute(
                "SELECT count(*) FROM enrollments WHERE contact_id NOT IN (SELECT id FROM contacts)"
            ).fetchone()[0]
        )
        assert orphans == 0


@SETTINGS
@given(data=csv_files())
def test_any_csv_export_is_read_or_refused_with_its_line(workspace: Path, data: bytes) -> None:
    read, lines = _read(workspace, "webinar-registrations", data)
    if isinstance(read, FileRead):
        _check_read(read, lines)
        _store(workspace, "webinar-registrations", read)


@SETTINGS
@given(data=jsonl_files())
def test_any_jsonl_export_is_read_or_refused_with_its_line(workspace: Path, data: bytes) -> None:
    read, lines = _read(workspace, "consultation-requests", data)
    if isinstance(read, FileRead):
        _check_read(read, lines)
        _store(workspace, "consultation-requests", read)


_PROBLEM_LINE = re.compile(r"^[^\s:]+:\d+: \S")


def _invoke(root: Path, *args: str) -> tuple[int, str]:
    import os

    old = Path.cwd()
    os.chdir(root)
    try:
        result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    finally:
        os.chdir(old)
    return result.exit_code, result.stderr


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(data=csv_files())
def test_funnel_import_answers_every_export_without_a_traceback(workspace: Path, data: bytes) -> None:
    """`funnel import`: exit 0 with `file:line:` problems, or 2 with one sentence; the database stays whole."""
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shutil.copy(workspace / "sequences.yaml", root / "sequences.yaml")
        shutil.copytree(workspace / "email_templates", root / "email_templates")
        shutil.copy(workspace / "empty.db", root / "funnel.db")
        (root / "export.csv").write_bytes(data)
        code, err = _invoke(root, "import", "webinar-registrations", "export.csv", "--now", NOW_TEXT)
        assert "unexpected" not in err and "Traceback" not in err, err
        assert code in (0, 1), err  # 1: the file as a whole is refused (SourceError), in one sentence
        if code == 1:
            assert err.startswith("funnel: export.csv:") and err.count("\n") == 1, err
        else:
            for line in err.splitlines():
                assert _PROBLEM_LINE.match(line) and line.startswith("export.csv:"), line
        config = load_config(root / "sequences.yaml")
        read, _ = _read(root, "webinar-registrations", data, settle=60)  # as `funnel import` reads a fresh file
        accepted = {email_hash(r.email) for r in read.rows} if isinstance(read, FileRead) else set()
        assert isinstance(read, FileRead) == (code == 0)
        source = config.sources["webinar-registrations"]
        _check_database(root / "funnel.db", accepted, source.tags, source.enroll)


# --------------------------------------------------------------------------- sequences.yaml


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every key path in the shipped config (mappings and list items), the containers too."""
    if prefix:
        yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, (*prefix, index))


_YAML = YAML(typ="safe", pure=True)
_YAML.allow_unicode = True
SHIPPED = _YAML.load((REPO / "sequences.yaml").read_text(encoding="utf-8"))
PATHS = sorted(_paths(SHIPPED), key=repr)

yaml_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(),
    st.sampled_from(
        [
            "0m",
            "-1d",
            "+3h",
            "99999999999d",
            "1e9h",
            "25:00-26:00",
            "20:00-08:00",
            "08:00-08:00",
            "mon-sun",
            "fri-mon",
            "funday",
            "../../../etc/passwd",
            "/etc/passwd",
            "webinar/missing.md",
            "{{ contact.",
            "{% for x in range(10**9) %}x{% endfor %}",
            "x" * 5000,
            "Europe/" + "x" * 5000,
            "signups/../../outside.csv",
            "csv",
            "jsonl",
            "form",
            "http://",
            "not an address",
        ]
    ),
    st.text(max_size=30),
    st.dates().map(str),
    st.datetimes().map(lambda d: d.isoformat()),
)
yaml_values = st.recursive(
    yaml_scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8) | st.sampled_from(["id", "wait"]), inner, max_size=3)
    ),
    max_leaves=5,
)


def _substitute(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    config = copy.deepcopy(SHIPPED)
    node = config
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return config  # type: ignore[no-any-return]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=st.sampled_from(PATHS), value=yaml_values)
def test_any_value_at_any_key_loads_or_names_its_line(workspace: Path, path: tuple[Any, ...], value: Any) -> None:
    config_file = workspace / "sequences.yaml"
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        shutil.copytree(workspace / "email_templates", root / "email_templates")
        (root / "signups").mkdir()
        target = root / "sequences.yaml"
        with target.open("w", encoding="utf-8") as handle:
            _YAML.dump(_substitute(path, value), handle)
        try:
            load_config(target)
        except ConfigError as exc:
            assert exc.problems, str(exc)
            for problem in exc.problems:
                assert problem.startswith("sequences.yaml:") and re.match(r"sequences\.yaml:\d+: \S", problem), problem
            return
        # it loads: the commands that read it must not fall over
        for args in (("check", "--now", NOW_TEXT), ("run", "--dry-run", "--now", NOW_TEXT)):
            code, err = _invoke(root, *args)
            assert "unexpected" not in err and "Traceback" not in err, (args, err)
            assert code in (0, 1, 2), (args, code, err)
    assert config_file.exists()


# --------------------------------------------------------------------------- form posts


@pytest.fixture(scope="module")
def form_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Any, Path]]:
    """One `funnel serve` for the module, with a rate limit high enough for hypothesis."""
    from web_server import FunnelServer

    root = tmp_path_factory.mktemp("forms")
    text = (REPO / "sequences.yaml").read_text(encoding="utf-8")
    (root / "sequences.yaml").write_text(text + "\nserve:\n  form_burst: 10000\n  form_per_minute: 10000\n")
    shutil.copytree(REPO / "email_templates", root / "email_templates")
    (root / "signups").mkdir()
    server = FunnelServer(root, ("--now", NOW_TEXT), {"FUNNEL_SECRET_KEY": SECRET}).start()
    try:
        yield server, root
    finally:
        server.stop()


content_types = st.one_of(
    st.sampled_from(
        [
            "application/x-www-form-urlencoded",
            "application/x-www-form-urlencoded; charset=utf-8",
            "application/x-www-form-urlencoded; charset=latin-1",
            "application/json",
            "application/ld+json",
            "APPLICATION/JSON; charset=UTF8",
            "multipart/form-data; boundary=x",
            "text/plain",
            "",
            "application/json; charset",
            "application/x-www-form-urlencoded;;charset==",
        ]
    ),
    st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
)
field_names = st.one_of(
    st.sampled_from(["email", "EMAIL ", "name", "message", "discreet", "website", "x"]), st.text(max_size=10)
)
field_values = st.one_of(values, emails)


@st.composite
def form_bodies(draw: st.DrawFn) -> tuple[bytes, str]:
    kind = draw(st.integers(0, 3))
    fields = draw(st.dictionaries(field_names, field_values, max_size=8))
    if draw(st.booleans()):
        fields["email"] = draw(emails)
    if kind == 0:
        body = httpx.QueryParams(fields).__str__().encode()
        return body, "application/x-www-form-urlencoded"
    if kind == 1:
        obj: Any = {k: draw(json_values) if draw(st.integers(0, 3)) == 0 else v for k, v in fields.items()}
        return json.dumps(obj).encode(), "application/json"
    return draw(st.binary(max_size=200)), draw(content_types)


def _accepted_address(root: Path, body: bytes, content_type: str) -> str | None:
    """The address a post the server accepted must have stored (None for the honeypot or a refusal)."""
    from funnel.web.forms import HONEYPOT, BadInput, parse_body, signup

    config = load_config(root / "sequences.yaml")
    try:
        fields = parse_body(body, content_type)
        if fields.get(HONEYPOT, "").strip():
            return None
        return signup(config, config.sources["consultation-form"], fields).email
    except BadInput:
        return None


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    post=form_bodies(),
    content_type=st.none() | content_types,
    accept=st.sampled_from(["", "application/json", "text/html"]),
)
def test_any_form_post_is_answered_without_a_server_error(
    form_server: tuple[Any, Path], post: tuple[bytes, str], content_type: str | None, accept: str
) -> None:
    server, root = form_server
    body, natural = post
    # (HTTP clients refuse a header value with spaces around it: trimmed, or left out when nothing is left)
    chosen = (content_type if content_type is not None else natural).strip()
    headers = {"content-type": chosen} if chosen else {}
    if accept:
        headers["accept"] = accept
    with server.client() as client:
        answer = client.post("/forms/consultation-form", content=body, headers=headers)
    assert answer.status_code < 500, (answer.status_code, answer.text, server.stderr[-2000:])
    assert answer.status_code in (200, 303) or 400 <= answer.status_code < 500
    db = root / "funnel.db"
    stored = (
        _accepted_address(root, body, headers.get("content-type", "")) if answer.status_code in (200, 303) else None
    )
    if stored is not None:  # an accepted post from a person (not the honeypot): it waits for her confirmation
        with sqlite3.connect(db) as conn:
            found = conn.execute("SELECT count(*) FROM pending_signups WHERE email_hash = ?", (email_hash(stored),))
            assert found.fetchone()[0] >= 1, "an accepted form post is missing"
    if not db.exists():
        return
    with sqlite3.connect(db) as conn:
        # until the mailbox owner confirms, a post creates nobody, tags nobody, enrolls nobody (spec 9)
        assert conn.execute("SELECT count(*) FROM contacts").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM consents").fetchone()[0] == 0
        failed = conn.execute("SELECT count(*) FROM pending_signups WHERE mail_status = 'failed'")
        assert failed.fetchone()[0] == 0, "a confirmation could not be written to the outbox"


# --------------------------------------------------------------------------- unsubscribe links

tokens = st.one_of(
    st.text(min_size=1, max_size=300),
    st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.", min_size=1, max_size=120),
    # signed with the right key but holding something no funnel ever signed
    st.builds(
        lambda payload: URLSafeSerializer(SECRET, salt="funnel-unsubscribe-v1").dumps(payload),
        st.one_of(json_values, st.lists(st.integers(min_value=-(2**70), max_value=2**70), min_size=2, max_size=2)),
    ),
    # the current format, signed with the right key, naming a key and an email nobody has
    st.builds(
        lambda key, send: Tokens(SECRET, previous=[]).make(key.hex(), send.hex() if send else None),
        st.binary(min_size=16, max_size=16),
        st.one_of(st.none(), st.binary(min_size=16, max_size=16)),
    ),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(token=tokens, method=st.sampled_from(["GET", "POST", "POST resubscribe"]), body=st.binary(max_size=300))
def test_any_unsubscribe_link_is_answered_without_a_server_error(
    form_server: tuple[Any, Path], token: str, method: str, body: bytes
) -> None:
    server, _root = form_server
    path = "/u/" + quote(token, safe="")
    with server.client() as client:
        if method == "GET":
            answer = client.get(path)
        else:
            answer = client.post(path + ("/resubscribe" if "resubscribe" in method else ""), content=body)
    assert answer.status_code < 500, (answer.status_code, answer.text[:300], server.stderr[-2000:])
