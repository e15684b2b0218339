"""The pure schedule's invariants under hypothesis, and a cron outage end to end.

Every datetime here is fixed and aware; expected instants are written in UTC
by hand (not computed with the code under test), so a wrong offset shows.

Dates used: US DST starts 2026-03-08 and ends 2026-11-01 (2:00 local); the
EU (London) starts 2026-03-29 01:00 UTC and ends 2026-10-25 01:00 UTC;
Sydney and Auckland end DST 2026-04-05 and start it 2026-10-04 / 2026-09-27.
2026-03-06 and 2026-10-30 are Fridays, 2026-03-09 a Monday.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schedule_helpers import (
    DENVER,
    ZONES,
    L,
    Z,
    check_snap,
    delivery,
    seq,
    step,
    wall_in_window,
)

from funnel.config import DAY_NAMES, Delivery, Sequence, Step
from funnel.schedule import (
    ContactState,
    EnrollmentState,
    Recorded,
    due_times,
    evaluate,
    first_look,
    in_window,
    next_opening,
    project,
)
from funnel.timeutil import add_duration, parse_duration

# ======================================== properties

SAFE_WINDOWS = [
    "08:00-20:00",
    "20:00-08:00",
    "09:00-17:00",
    "00:00-06:00",
    "18:00-00:00",
    "23:00-04:00",
]
WAITS = ["0m", "30m", "2h", "20h", "1d", "2d", "1w"]
OFFSETS = ["-1d", "-1h", "-30m", "+0m", "+3h", "+1d", "+2d"]
CLOCKS = [None, None, time(2, 30), time(1, 30), time(9), time(19), time(0)]
# instants near every DST change of 2026 in the zones used
BASES = [
    Z(2026, 3, 6, 12),
    Z(2026, 3, 27, 12),
    Z(2026, 4, 3, 12),
    Z(2026, 9, 25, 12),
    Z(2026, 10, 2, 12),
    Z(2026, 10, 23, 12),
    Z(2026, 10, 30, 12),
    Z(2026, 7, 1, 12),
]
PROPERTY = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@st.composite
def deliveries(draw: st.DrawFn) -> Delivery:
    return Delivery(
        send_window=draw(st.sampled_from(SAFE_WINDOWS)),
        send_days=draw(st.lists(st.sampled_from(DAY_NAMES), min_size=1, max_size=7, unique=True)),
        min_gap=draw(st.sampled_from(["0m", "1h", "20h", "1d", "2d"])),
        max_late=draw(st.sampled_from(["0m", "1h", "1d", "2d", "3d"])),
    )


@st.composite
def sequences(draw: st.DrawFn, prefix: str) -> Sequence:
    count = draw(st.integers(1, 5))
    steps = []
    for index in range(count):
        timing: dict[str, object]
        if draw(st.integers(0, 2)):
            timing = {"wait": draw(st.sampled_from(WAITS))}
        else:
            timing = {"webinar": draw(st.sampled_from(OFFSETS))}
        clock = draw(st.sampled_from(CLOCKS))
        if clock is not None:
            timing["at"] = clock
        steps.append(
            step(
                f"{prefix}{index}",
                transactional=draw(st.booleans()),
                if_tags=draw(st.sampled_from([(), (), (), ("x",), ("x", "y")])),
                unless_tags=draw(st.sampled_from([(), (), (), ("z",)])),
                **timing,
            )
        )
    return seq(*steps)


@dataclass
class Enrollment:
    sequence: Sequence
    enrolled_at: datetime
    webinar_start: datetime | None
    recorded: dict[str, Recorded] = field(default_factory=dict)
    outcomes: dict[str, list[str]] = field(default_factory=dict)

    def state(self) -> EnrollmentState:
        return EnrollmentState(self.enrolled_at, self.webinar_start, dict(self.recorded))


@dataclass
class Sent:
    enrollment: int
    step: Step
    at: datetime
    due: datetime


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[ZoneInfo, Delivery, list[Enrollment], frozenset[str]]:
    tz = draw(st.sampled_from(ZONES))
    dl = draw(deliveries())
    base = draw(st.sampled_from(BASES)) + timedelta(minutes=draw(st.integers(0, 4 * 1440)))
    enrollments = []
    for index in range(draw(st.integers(1, 2))):
        enrolled = base + timedelta(minutes=draw(st.integers(0, 3 * 1440)) if index else 0)
        webinar = draw(st.sampled_from([None, *range(-1440, 10 * 1440, 97)]))
        if webinar is not None:
            webinar = enrolled + timedelta(minutes=webinar)
        enrollments.append(Enrollment(draw(sequences("ab"[index])), enrolled, webinar))
    tags = frozenset(draw(st.lists(st.sampled_from(["x", "y", "z"]), unique=True)))
    return tz, dl, enrollments, tags


def _step_once(
    enrollments: list[Enrollment],
    contact: ContactState,
    now: datetime,
    dl: Delivery,
    sent: list[Sent],
    failures: list[bool],
) -> tuple[ContactState, list[datetime]]:
    """One run at `now` as the runner does it: each enrollment in turn, the contact carried on."""
    wakes = []
    for index, enrollment in enumerate(enrollments):
        if now < enrollment.enrolled_at:
            wakes.append(enrollment.enrolled_at)
            continue
        evaluation = evaluate(enrollment.sequence, enrollment.state(), contact, now, dl)
        assert evaluation.exit_reason is None
        assert evaluation.contact is not None
        contact = evaluation.contact
        assert evaluation.finished == (evaluation.wake_at is None)
        if evaluation.wake_at is not None:
            assert evaluation.wake_at > now
            wakes.append(evaluation.wake_at)
        dues = due_times(enrollment.sequence, enrollment.enrolled_at, enrollment.webinar_start, contact.tz)
        for item in (*evaluation.sends, *evaluation.skips):
            previous = enrollment.recorded.get(item.step.id)
            assert previous is None or (previous.status == "failed" and previous.retryable), (
                f"{item.step.id} decided again after {previous}"
            )
            assert item.due_at == dues[item.step.id]
        for send in evaluation.sends:
            # a send fails retryably now and then; the runner reconsiders it later
            if failures and failures.pop():
                enrollment.recorded[send.step.id] = Recorded("failed", retryable=True, reason="HTTP 503")
                continue
            enrollment.recorded[send.step.id] = Recorded("sent")
            enrollment.outcomes.setdefault(send.step.id, []).append("sent")
            sent.append(Sent(index, send.step, now, send.due_at))
        for skip in evaluation.skips:
            enrollment.recorded[skip.step.id] = Recorded("skipped", reason=skip.reason)
            enrollment.outcomes.setdefault(skip.step.id, []).append(f"skipped: {skip.reason}")
    return contact, wakes


def _check_sends(sent: list[Sent], enrollments: list[Enrollment], contact: ContactState, dl: Delivery) -> None:
    seen = set()
    for item in sent:
        enrollment = enrollments[item.enrollment]
        key = (item.enrollment, item.step.id)
        assert key not in seen, f"{item.step.id} sent twice"
        seen.add(key)
        assert item.at >= item.due, f"{item.step.id} sent before its due time"
        assert item.at >= enrollment.enrolled_at
        assert item.due >= enrollment.enrolled_at, f"{item.step.id} was due before enrollment"
        start = enrollment.webinar_start
        if start is not None and (item.due < start or (item.step.webinar and item.step.webinar.approx < timedelta(0))):
            assert item.at < start, f"{item.step.id}, timed before the webinar, was sent after its start"
        if item.step.if_tags:
            assert contact.tags.intersection(item.step.if_tags)
        assert not contact.tags.intersection(item.step.unless_tags)
        if item.step.transactional:
            assert item.at - item.due <= dl.max_late.approx
        else:
            assert wall_in_window(item.at, dl, contact.tz), f"{item.step.id} sent outside the window"
    marketing = sorted(item.at for item in sent if not item.step.transactional)
    for earlier, later in zip(marketing, marketing[1:], strict=False):
        assert later - earlier >= dl.min_gap.approx


@PROPERTY
@given(
    scenario=scenarios(),
    moves=st.lists(
        st.sampled_from([None, None, None, 1, 10, 60, 600]) | st.integers(1, 4 * 1440),
        min_size=3,
        max_size=40,
    ),
    failures=st.lists(st.booleans(), max_size=6),
)
def test_property_simulated_runs(
    scenario: tuple[ZoneInfo, Delivery, list[Enrollment], frozenset[str]],
    moves: list[int | None],
    failures: list[bool],
) -> None:
    """Runs at random moments (sometimes exactly when asked to wake) keep every rule."""
    tz, dl, enrollments, tags = scenario
    contact = ContactState(tz, tags)
    sent: list[Sent] = []
    now = enrollments[0].enrolled_at
    contact, wakes = _step_once(enrollments, contact, now, dl, sent, failures)
    for move in moves:
        if move is None:
            if not wakes:
                continue
            now = min(wakes)
        else:
            now = now + timedelta(minutes=move)
        contact, wakes = _step_once(enrollments, contact, now, dl, sent, failures)

    # then runs whenever asked to, until past the last due time + max_late + a week,
    # and on at the times asked for: every step ends with exactly one outcome. (Not
    # always *by* that time: min_gap moves a marketing step's opening, lateness counts
    # from there, so several steps due together on `send_days: [mon]` go a week apart.)
    last_due = max(
        [e.enrolled_at for e in enrollments]
        + [d for e in enrollments for d in due_times(e.sequence, e.enrolled_at, e.webinar_start, tz).values() if d]
    )
    end = last_due + dl.max_late.approx + timedelta(days=7)
    while wakes and min(wakes) < end:
        now = min(wakes)
        contact, wakes = _step_once(enrollments, contact, now, dl, sent, failures)
    now = max(now, end)
    failures.clear()
    for _ in range(50):
        contact, wakes = _step_once(enrollments, contact, now, dl, sent, failures)
        if not wakes:
            break
        now = min(wakes)
    assert not wakes
    for enrollment in enrollments:
        for s in enrollment.sequence.steps:
            assert len(enrollment.outcomes.get(s.id, [])) == 1, (s.id, enrollment.outcomes)
            assert enrollment.recorded[s.id].status in ("sent", "skipped")
    _check_sends(sent, enrollments, contact, dl)


@PROPERTY
@given(scenario=scenarios(), horizon=st.integers(0, 30 * 1440))
def test_property_project_keeps_the_rules(
    scenario: tuple[ZoneInfo, Delivery, list[Enrollment], frozenset[str]], horizon: int
) -> None:
    tz, dl, enrollments, tags = scenario
    now = max(e.enrolled_at for e in enrollments)
    until = now + timedelta(minutes=horizon)
    states = {f"s{i}": (e.sequence, e.state()) for i, e in enumerate(enrollments)}
    plan = project(states, ContactState(tz, tags), now, until, dl)
    sent = []
    for item in plan:
        index = int(item.sequence[1:])
        enrollment = enrollments[index]
        s = enrollment.sequence.step(item.step)
        assert s is not None
        due = due_times(enrollment.sequence, enrollment.enrolled_at, enrollment.webinar_start, tz)[s.id]
        assert due is not None
        assert now <= item.at <= until
        sent.append(Sent(index, s, item.at, due))
    assert [p.at for p in plan] == sorted(p.at for p in plan)
    _check_sends(sent, enrollments, ContactState(tz, tags), dl)


@PROPERTY
@given(
    tz=st.sampled_from(ZONES),
    dl=deliveries(),
    base=st.sampled_from(BASES),
    minutes=st.integers(0, 14 * 1440),
    probe=st.floats(0, 1),
)
def test_property_next_opening(tz: ZoneInfo, dl: Delivery, base: datetime, minutes: int, probe: float) -> None:
    instant = base + timedelta(minutes=minutes)
    opening = next_opening(instant, dl, tz)
    assert instant <= opening <= instant + timedelta(days=8)
    assert wall_in_window(opening, dl, tz)
    assert in_window(instant, dl, tz) == wall_in_window(instant, dl, tz)
    if opening > instant:
        # nothing in between is open: the minute before and a random moment
        assert not wall_in_window(opening - timedelta(minutes=1), dl, tz)
        between = instant + (opening - instant) * probe
        assert between == opening or not wall_in_window(between, dl, tz)
        assert not in_window(between, dl, tz) or between == opening


@PROPERTY
@given(
    tz=st.sampled_from(ZONES),
    base=st.sampled_from(BASES),
    minutes=st.integers(0, 14 * 1440),
    days=st.integers(-14, 14),
    clock=st.sampled_from([c for c in CLOCKS if c is not None] + [time(2, 15), time(8, 45)]),
)
def test_property_durations_and_clock(tz: ZoneInfo, base: datetime, minutes: int, days: int, clock: time) -> None:
    instant = base + timedelta(minutes=minutes)
    local = instant.astimezone(tz)
    moved = add_duration(instant, parse_duration(f"{days:+d}d", signed=True), tz).astimezone(tz)
    assert moved.date() == local.date() + timedelta(days=days)
    target = datetime.combine(local.date() + timedelta(days=days), local.time(), tzinfo=tz)
    if target.astimezone(UTC).astimezone(tz).time() == local.time():
        assert moved.time() == local.time()  # same wall clock, unless it fell into a DST gap
    assert abs((moved - instant) - timedelta(days=days)) <= timedelta(hours=1)
    exact = add_duration(instant, parse_duration(f"{abs(days) * 60}m"), tz)
    assert exact - instant == timedelta(hours=abs(days))

    check_snap(instant, clock, tz)


# ======================================== end to end: cron down across a webinar

E2E_HEADER = "Email,First Name,Last Name,Webinar Start,Time Zone,Discreet\n"


def test_cron_down_across_the_webinar_sends_no_reminder_after_it_began(project, funnel) -> None:
    """Issue 6 item 7, with the real command: "Tomorrow" and "in an hour" never go after the start.

    The webinar is 2027-01-14 19:00 Denver (02:00Z on the 15th). Ana registered days
    before; cron is down from before the day-before reminder until 30 minutes after
    the start. Bea registers while it is running: no confirmation for it at all.
    """
    project.write(
        "signups/webinar-registrations.csv",
        E2E_HEADER + "ana@example.test,Ana,Reyes,2027-01-14 19:00,America/Denver,no\n",
    )
    project.write("signups/webinar-attendance.csv", "Email,Attended\n")
    first = funnel("run", "--now", "2027-01-10T16:00:00Z", "--json")
    assert first.code == 0, first.err
    assert project.sent() == [("ana@example.test", "webinar-relationship-911", "registered")]

    project.append("signups/webinar-registrations.csv", "bea@example.test,Bea,Lind,2027-01-14 19:00,America/Denver,\n")
    late = funnel("run", "--now", "2027-01-15T02:30:00Z", "--json")
    assert late.code == 0, late.err
    assert late.json()["sent"] == 0
    assert len(project.sent()) == 1

    steps = {
        s["id"]: s for s in funnel("contacts", "show", "ana@example.test", "--json").json()["enrollments"][0]["steps"]
    }
    for step_id in ("day-before", "hour-before"):
        assert (steps[step_id]["status"], steps[step_id]["reason"]) == ("skipped", "the webinar had already begun")
    bea = {
        s["id"]: s for s in funnel("contacts", "show", "bea@example.test", "--json").json()["enrollments"][0]["steps"]
    }
    assert (bea["registered"]["status"], bea["registered"]["reason"]) == ("skipped", "the webinar had already begun")
    shown = funnel("contacts", "show", "bea@example.test")
    assert "the webinar had already begun" in shown.out

    # after the webinar its own steps still go (the replay, in the morning window)
    funnel("run", "--now", "2027-01-15T16:00:00Z")
    assert sorted(s for _to, _seq, s in project.sent()) == ["registered", "replay", "replay"]


@PROPERTY
@given(
    scenario=scenarios(),
    after_start=st.integers(0, 10 * 1440),
    sent=st.sets(st.integers(0, 4)),
)
def test_property_nothing_timed_before_the_webinar_goes_at_or_after_its_start(
    scenario: tuple[ZoneInfo, Delivery, list[Enrollment], frozenset[str]], after_start: int, sent: set[int]
) -> None:
    """Issue 6 item 7: whatever the sequence, the delivery settings and what was sent before."""
    tz, dl, enrollments, tags = scenario
    for enrollment in enrollments:
        start = enrollment.webinar_start
        if start is None:
            continue
        now = max(start, enrollment.enrolled_at) + timedelta(minutes=after_start)
        recorded = {s.id: Recorded("sent") for i, s in enumerate(enrollment.sequence.steps) if i in sent}
        state = EnrollmentState(enrollment.enrolled_at, start, recorded)
        evaluation = evaluate(enrollment.sequence, state, ContactState(tz, tags), now, dl)
        for send in evaluation.sends:
            assert not (send.step.webinar and send.step.webinar.approx < timedelta(0)), send.step
            assert send.due_at >= start, send.step


# --------------------------------------------------------------------------- first look


@PROPERTY
@given(
    scenario=scenarios(),
    last_marketing=st.sampled_from([None, -1440, -600, -60]),
    fraction=st.floats(0, 1),
)
def test_first_look_is_never_later_than_the_first_decision(
    scenario: tuple[ZoneInfo, Delivery, list[Enrollment], frozenset[str]],
    last_marketing: int | None,
    fraction: float,
) -> None:
    """Until an enrollment's first look the schedule only waits, whatever the person's tags and last email.

    So a run that looks at a new enrollment only then (ingest sets it as
    `next_due_at`) decides exactly what a run looking at once would.
    """
    tz, dl, enrollments, tags = scenario
    enrollment = enrollments[0]
    enrolled = enrollment.enrolled_at
    look = first_look(enrollment.sequence, enrolled, enrollment.webinar_start, tz, dl)
    assert look >= enrolled
    contact = ContactState(
        tz=tz,
        tags=tags,
        last_marketing_at=None if last_marketing is None else enrolled + timedelta(minutes=last_marketing),
    )
    # at the enrollment, and at any moment before the first look: nothing but waiting, until no earlier than it
    for now in {enrolled, enrolled + (look - enrolled) * fraction} - {look} if look > enrolled else set():
        evaluation = evaluate(enrollment.sequence, enrollment.state(), contact, now, dl)
        assert (evaluation.sends, evaluation.skips, evaluation.exit_reason, evaluation.finished) == (
            (),
            (),
            None,
            False,
        )
        assert evaluation.wake_at is not None and evaluation.wake_at >= look


def test_first_look_of_a_letter_enrolled_at_night_is_the_morning() -> None:
    """Enrolled at 02:00 in Denver: a marketing letter due at once is first looked at when the window opens."""
    letter = seq(step("a", wait="0m"))
    assert first_look(letter, L(DENVER, 2026, 7, 1, 2), None, DENVER, delivery()) == L(DENVER, 2026, 7, 1, 8)
    # a transactional one (a confirmation) is looked at at once, night or day
    confirmation = seq(step("a", wait="0m", transactional=True), step("b", wait="1d"))
    assert first_look(confirmation, L(DENVER, 2026, 7, 1, 2), None, DENVER, delivery()) == L(DENVER, 2026, 7, 1, 2)
    # a step without a webinar date is skipped at once: looked at at once
    reminder = seq(step("a", webinar="-1d"), step("b", wait="1d"))
    assert first_look(reminder, L(DENVER, 2026, 7, 1, 2), None, DENVER, delivery()) == L(DENVER, 2026, 7, 1, 2)
