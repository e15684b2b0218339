"""The pure schedule's rules: webinars, tags and goals, suppression, recorded steps, plans.

Every datetime here is fixed and aware; expected instants are written in UTC
by hand (not computed with the code under test), so a wrong offset shows.

Dates used: US DST starts 2026-03-08 and ends 2026-11-01 (2:00 local); the
EU (London) starts 2026-03-29 01:00 UTC and ends 2026-10-25 01:00 UTC;
Sydney and Auckland end DST 2026-04-05 and start it 2026-10-04 / 2026-09-27.
2026-03-06 and 2026-10-30 are Fridays, 2026-03-09 a Monday.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from schedule_helpers import (
    AUCKLAND,
    DENVER,
    KOLKATA,
    LONDON,
    NEW_YORK,
    SYDNEY,
    WEBINAR,
    WEEKDAYS,
    L,
    Z,
    delivery,
    outcome,
    run,
    seq,
    step,
)

from funnel.config import Delivery, Sequence, Step
from funnel.schedule import (
    ContactState,
    EnrollmentState,
    Evaluation,
    Recorded,
    evaluate,
    project,
)
from funnel.timeutil import parse_duration

# ======================================== evaluate: webinar signups


def test_webinar_sequence_registered_days_ahead() -> None:
    webinar = L(DENVER, 2026, 3, 12, 19)
    enrolled = L(DENVER, 2026, 3, 9, 15)
    evaluation = run(WEBINAR, enrolled, enrolled, webinar_start=webinar)
    assert [s.step.id for s in evaluation.sends] == ["registered"]
    assert evaluation.skips == ()
    assert evaluation.wake_at == L(DENVER, 2026, 3, 11, 19)  # day-before, transactional: no window


def test_late_signup_two_hours_before_the_webinar() -> None:
    webinar = L(DENVER, 2026, 3, 12, 19)
    enrolled = webinar - timedelta(hours=2)
    evaluation = run(WEBINAR, enrolled, enrolled, webinar_start=webinar)
    assert [s.step.id for s in evaluation.sends] == ["registered"]
    assert outcome(evaluation, "day-before") == "skip: before enrollment"
    # replay and thank-you are due at 22:00, outside the window: they wait for 08:00
    assert evaluation.wake_at == L(DENVER, 2026, 3, 13, 8)

    recorded = {"registered": Recorded("sent"), "day-before": Recorded("skipped")}
    at_ten = run(WEBINAR, enrolled, L(DENVER, 2026, 3, 12, 22), webinar_start=webinar, recorded=recorded)
    assert at_ten.sends == () and at_ten.skips == ()
    morning = run(WEBINAR, enrolled, L(DENVER, 2026, 3, 13, 8), webinar_start=webinar, recorded=recorded)
    assert outcome(morning, "replay") == "send"
    # thank-you's tag condition is read when its window opens, before the gap the
    # replay just took: a step that does not apply is settled at its own time
    assert outcome(morning, "thank-you") == "skip: without tag webinar-attended"
    # offer: 2 days after thank-you's due time (Thu 22:00), at 09:00 -> Sun 09:00
    assert morning.wake_at == L(DENVER, 2026, 3, 15, 9)


def test_attendance_tag_is_read_at_send_time() -> None:
    webinar = L(DENVER, 2026, 3, 12, 12)
    enrolled = L(DENVER, 2026, 3, 1, 12)
    recorded = {"registered": Recorded("sent"), "day-before": Recorded("sent")}
    now = webinar + timedelta(hours=3)
    evaluation = run(
        WEBINAR,
        enrolled,
        now,
        webinar_start=webinar,
        recorded=recorded,
        tags=frozenset({"webinar-attended"}),
    )
    assert outcome(evaluation, "replay") == "skip: tag webinar-attended"
    assert outcome(evaluation, "thank-you") == "send"


@pytest.mark.parametrize(
    ("minutes_before", "day_before", "hour_before"),
    [
        (25 * 60 + 1, "send", "send"),
        (25 * 60, "send", "send"),  # due exactly at enrollment applies
        (24 * 60 + 30, "skip: before enrollment", "send"),  # -1d is 25 h here: clocks went back
        (2 * 60, "skip: before enrollment", "send"),
        (60, "skip: before enrollment", "send"),
        (30, "skip: before enrollment", "skip: before enrollment"),
    ],
)
def test_before_enrollment(minutes_before: int, day_before: str, hour_before: str) -> None:
    webinar = L(NEW_YORK, 2026, 11, 1, 19)  # EST; the day before at 19:00 is EDT
    sequence = seq(
        step("day-before", webinar="-1d", transactional=True),
        step("hour-before", webinar="-1h", transactional=True),
    )
    enrolled = webinar - timedelta(minutes=minutes_before)
    first = run(
        sequence,
        enrolled,
        max(enrolled, L(NEW_YORK, 2026, 10, 31, 19)),
        NEW_YORK,
        webinar_start=webinar,
    )
    assert outcome(first, "day-before") == day_before
    recorded = {"day-before": Recorded("sent")}
    second = run(
        sequence,
        enrolled,
        max(enrolled, webinar - timedelta(hours=1)),
        NEW_YORK,
        webinar_start=webinar,
        recorded=recorded,
    )
    assert outcome(second, "hour-before") == hour_before


def test_signup_after_the_webinar_started() -> None:
    """Issue 6 item 7: no confirmation for a webinar that has already begun; the replay still comes."""
    webinar = L(KOLKATA, 2026, 3, 12, 19)
    enrolled = webinar + timedelta(minutes=10)
    evaluation = run(WEBINAR, enrolled, enrolled, KOLKATA, webinar_start=webinar)
    assert evaluation.sends == ()
    assert outcome(evaluation, "registered") == "skip: the webinar had already begun"
    assert outcome(evaluation, "day-before") == "skip: before enrollment"
    assert outcome(evaluation, "replay") == "wait"


# The shipped webinar sequence's shape: a confirmation, two reminders, then after it.
REMINDERS = seq(
    step("registered", wait="0m", transactional=True),
    step("day-before", webinar="-1d", transactional=True),
    step("hour-before", webinar="-1h", transactional=True),
    step("between", wait="30m", transactional=True),  # due 30 minutes before the start
    step("replay", webinar="+3h", unless_tags=("webinar-attended",)),
    step("thank-you", webinar="+3h", if_tags=("webinar-attended",)),
    step("offer", wait="2d", at="09:00"),
)
BEGUN = "skip: the webinar had already begun"


@pytest.mark.parametrize(
    ("enrolled_before", "now_after", "recorded", "expected"),
    [
        # cron down from before the day-before reminder until after the start
        ("3d", "+0m", ("registered",), {"day-before": BEGUN, "hour-before": BEGUN, "between": BEGUN}),
        ("3d", "+30m", ("registered",), {"day-before": BEGUN, "hour-before": BEGUN, "between": BEGUN}),
        # down until just before the start: the reminders still make sense and go
        ("3d", "-10m", ("registered",), {"day-before": "send", "hour-before": "send", "between": "send"}),
        # the run is reached by nothing before the webinar: not even the confirmation
        ("1d", "+10m", (), {"registered": BEGUN, "day-before": BEGUN, "hour-before": BEGUN}),
        # later than max_late (2d) too: that reason comes first, as for any long outage
        ("3d", "+10m", (), {"registered": "skip: late by 3 days", "hour-before": BEGUN}),
        # after the webinar, its own steps are not touched
        ("1d", "+3h", (), {"registered": BEGUN, "replay": "send", "thank-you": "skip: without tag webinar-attended"}),
    ],
)
def test_nothing_about_a_coming_webinar_after_it_began(
    enrolled_before: str, now_after: str, recorded: tuple[str, ...], expected: dict[str, str]
) -> None:
    """Issue 6 item 7: a step timed before the webinar is never sent at or after its start."""
    webinar = L(DENVER, 2026, 3, 12, 12)
    enrolled = webinar - parse_duration(enrolled_before).approx
    now = webinar + parse_duration(now_after, signed=True).approx
    evaluation = run(REMINDERS, enrolled, now, webinar_start=webinar, recorded={r: Recorded("sent") for r in recorded})
    assert {step_id: outcome(evaluation, step_id) for step_id in expected} == expected


def test_a_reminder_waiting_for_the_window_past_the_start_is_skipped() -> None:
    """A marketing reminder due before the start whose window opens after it never goes."""
    webinar = L(DENVER, 2026, 3, 12, 8, 30)
    sequence = seq(step("early", webinar="-2h"))  # due 06:30, window opens 08:00
    first = run(sequence, webinar - timedelta(days=3), webinar - timedelta(hours=2), webinar_start=webinar)
    assert outcome(first, "early") == "wait" and first.wake_at == L(DENVER, 2026, 3, 12, 8)
    at_eight = run(sequence, webinar - timedelta(days=3), L(DENVER, 2026, 3, 12, 8), webinar_start=webinar)
    assert outcome(at_eight, "early") == "send"
    after = run(sequence, webinar - timedelta(days=3), webinar, webinar_start=webinar)
    assert outcome(after, "early") == BEGUN


def test_a_sequence_without_webinar_steps_is_not_held_to_the_webinar() -> None:
    """`next:` carries the webinar over; the follow-up sequence's steps are not about it."""
    webinar = L(DENVER, 2026, 3, 12, 12)
    enrolled = webinar + timedelta(days=3)
    evaluation = run(seq(step("a", transactional=True)), enrolled, enrolled, webinar_start=webinar)
    assert outcome(evaluation, "a") == "send"


@pytest.mark.parametrize("start_year", [9999, 8999])
def test_a_due_time_out_of_range_is_skipped_not_a_crash(start_year: int) -> None:
    """Issue 6 item 4: date arithmetic near year 9999 never stops the run."""
    webinar = datetime(start_year, 12, 30, 10, tzinfo=UTC)
    enrolled = Z(2026, 3, 1, 12)
    sequence = seq(
        step("registered", transactional=True),
        step("day-before", webinar="-1d", transactional=True),
        step("replay", webinar="+260w"),
    )
    evaluation = run(sequence, enrolled, enrolled, AUCKLAND, webinar_start=webinar)
    assert outcome(evaluation, "registered") == "send"
    assert outcome(evaluation, "replay") == "skip: due time out of range"
    expected = "skip: due time out of range" if start_year == 9999 else "wait"
    assert outcome(evaluation, "day-before") == expected
    plan = project(
        {"w": (sequence, EnrollmentState(enrolled, webinar))},
        ContactState(AUCKLAND),
        enrolled,
        enrolled + timedelta(days=30),
        delivery(),
    )
    assert [p.step for p in plan] == ["registered"]


# ======================================== evaluate: tags, exit, suppression


@pytest.mark.parametrize(
    ("if_tags", "unless_tags", "tags", "expected"),
    [
        (("vip",), (), set(), "skip: without tag vip"),
        (("a", "b"), (), set(), "skip: without tag a or b"),
        (("a", "b"), (), {"b"}, "send"),
        ((), ("attended",), {"attended"}, "skip: tag attended"),
        ((), ("attended",), {"other"}, "send"),
        ((), ("y", "x"), {"x", "y"}, "skip: tag x"),
        (("a",), ("b",), {"a", "b"}, "skip: tag b"),
        (("a",), ("b",), {"a"}, "send"),
    ],
)
@pytest.mark.parametrize("transactional", [False, True])
def test_tag_conditions(
    if_tags: tuple[str, ...],
    unless_tags: tuple[str, ...],
    tags: set[str],
    expected: str,
    transactional: bool,
) -> None:
    sequence = seq(step(if_tags=if_tags, unless_tags=unless_tags, transactional=transactional))
    now = L(AUCKLAND, 2026, 4, 5, 10)
    evaluation = run(sequence, now, now, AUCKLAND, tags=frozenset(tags))
    assert outcome(evaluation) == expected
    assert evaluation.exit_reason is None and evaluation.finished


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({"client"}, "goal reached: tag client"),
        ({"consultation-requested", "client"}, "goal reached: tag client"),
        ({"consultation-requested"}, "goal reached: tag consultation-requested"),
    ],
)
def test_a_reached_goal_ends_the_marketing_steps_once_the_reminders_are_done(tags: set[str], reason: str) -> None:
    webinar = L(DENVER, 2026, 3, 12, 12)
    enrolled = L(DENVER, 2026, 3, 1, 12)
    recorded = {"registered": Recorded("sent"), "day-before": Recorded("sent")}
    evaluation = run(
        WEBINAR,
        enrolled,
        webinar + timedelta(hours=3),
        webinar_start=webinar,
        recorded=recorded,
        tags=frozenset(tags),
    )
    # not an exit of the whole enrollment: it finishes, without going on to `next`
    assert evaluation.exit_reason is None
    assert evaluation.finished and evaluation.goal == reason and evaluation.wake_at is None
    assert evaluation.sends == ()
    assert [(s.step.id, s.reason) for s in evaluation.skips] == [
        ("replay", reason),
        ("thank-you", reason),
        ("offer", reason),
    ]


GOAL = frozenset({"consultation-requested"})
MARKETING_FIRST = seq(
    step("tip", wait="0m"),
    step("reminder", webinar="-1h", transactional=True),
    exit_on_tags=("consultation-requested",),
)
CONFIRM_THEN_TIP = seq(
    step("confirm", wait="0m", transactional=True),
    step("tip", wait="0m"),
    exit_on_tags=("consultation-requested",),
)
TIP_THEN_CONFIRM = seq(
    step("tip", wait="0m"),
    step("confirm", wait="1d", transactional=True),
    exit_on_tags=("consultation-requested",),
)
G_WEBINAR = L(DENVER, 2026, 3, 12, 19)
G_ENROLLED = L(DENVER, 2026, 3, 9, 10)  # a Monday, inside the window


@pytest.mark.parametrize(
    ("sequence", "now", "recorded", "tags", "expected", "finished", "goal"),
    [
        # she registered and asked for a consultation at once: the confirmation still goes
        (WEBINAR, G_ENROLLED, {}, GOAL, {"registered": "send", "replay": "wait", "offer": "wait"}, False, None),
        # the day-before reminder still goes
        (
            WEBINAR,
            L(DENVER, 2026, 3, 11, 19),
            {"registered": Recorded("sent")},
            GOAL,
            {"day-before": "send", "replay": "wait"},
            False,
            None,
        ),
        # a marketing step whose time comes while a reminder is ahead: skipped, the reminder waits
        (
            MARKETING_FIRST,
            G_ENROLLED,
            {},
            GOAL,
            {"tip": "skip: goal reached: tag consultation-requested", "reminder": "wait"},
            False,
            None,
        ),
        # ... and the reminder goes at its time; the sequence then ends without `next`
        (
            MARKETING_FIRST,
            L(DENVER, 2026, 3, 12, 18),
            {"tip": Recorded("skipped")},
            GOAL,
            {"reminder": "send"},
            True,
            "goal reached: tag consultation-requested",
        ),
        # a send decided in the same pass is kept when the goal ends the rest
        (
            CONFIRM_THEN_TIP,
            G_ENROLLED,
            {},
            GOAL,
            {"confirm": "send", "tip": "skip: goal reached: tag consultation-requested"},
            True,
            "goal reached: tag consultation-requested",
        ),
        # a marketing step first, the transactional one a day later: it still goes
        (
            TIP_THEN_CONFIRM,
            G_ENROLLED,
            {},
            GOAL,
            {"tip": "skip: goal reached: tag consultation-requested", "confirm": "wait"},
            False,
            None,
        ),
        # without the goal nothing changes, and finishing leads on to `next`
        (CONFIRM_THEN_TIP, G_ENROLLED, {}, frozenset(), {"confirm": "send", "tip": "send"}, True, None),
        (
            CONFIRM_THEN_TIP,
            G_ENROLLED,
            {"confirm": Recorded("sent")},
            frozenset({"other"}),
            {"tip": "send"},
            True,
            None,
        ),
    ],
)
def test_goal_rule_table(
    sequence: Sequence,
    now: datetime,
    recorded: dict[str, Recorded],
    tags: frozenset[str],
    expected: dict[str, str],
    finished: bool,
    goal: str | None,
) -> None:
    evaluation = run(sequence, G_ENROLLED, now, webinar_start=G_WEBINAR, recorded=recorded, tags=tags)
    assert {step_id: outcome(evaluation, step_id) for step_id in expected} == expected
    assert evaluation.exit_reason is None
    assert (evaluation.finished, evaluation.goal) == (finished, goal)


def test_untagged_before_its_time_the_marketing_step_goes_after_all() -> None:
    """The goal is looked at when a step's time comes, not when the tag was set."""
    first = run(TIP_THEN_CONFIRM, G_ENROLLED, G_ENROLLED - timedelta(hours=1), tags=GOAL)
    assert outcome(first, "tip") == "wait"
    later = run(TIP_THEN_CONFIRM, G_ENROLLED, G_ENROLLED, tags=frozenset())
    assert outcome(later, "tip") == "send"


@pytest.mark.parametrize("suppressed", ["unsubscribed", "bounced", "erased"])
@pytest.mark.parametrize("transactional", [False, True])
def test_suppressed_contact_leaves(suppressed: str, transactional: bool) -> None:
    now = L(SYDNEY, 2026, 10, 4, 10)
    evaluation = run(seq(step(transactional=transactional), step("b")), now, now, SYDNEY, suppressed=suppressed)
    assert evaluation.exit_reason == suppressed
    assert evaluation.sends == ()
    assert outcome(evaluation) == f"skip: {suppressed}"
    assert outcome(evaluation, "b") == "wait"  # not recorded: the whole enrollment ends


# ======================================== evaluate: recorded steps


@pytest.mark.parametrize(
    ("recorded", "expected"),
    [
        (Recorded("sent"), "wait"),
        (Recorded("skipped"), "wait"),
        (Recorded("unknown"), "wait"),
        (Recorded("sending"), "wait"),
        (Recorded("failed", retryable=False), "wait"),
        (Recorded("failed", retryable=True, reason="HTTP 503"), "send"),
    ],
)
def test_recorded_steps(recorded: Recorded, expected: str) -> None:
    now = L(NEW_YORK, 2026, 3, 10, 10)
    evaluation = run(
        seq(step(transactional=True)),
        now,
        now + timedelta(hours=1),
        NEW_YORK,
        recorded={"a": recorded},
    )
    assert outcome(evaluation) == expected
    assert evaluation.finished and evaluation.wake_at is None


def test_retryable_failure_is_still_subject_to_lateness() -> None:
    enrolled = L(NEW_YORK, 2026, 3, 9, 10)
    evaluation = run(
        seq(step()),
        enrolled,
        L(NEW_YORK, 2026, 3, 14, 10),
        NEW_YORK,
        recorded={"a": Recorded("failed", retryable=True)},
    )
    assert outcome(evaluation) == "skip: late by 5 days"


def test_nothing_left() -> None:
    now = L(DENVER, 2026, 3, 10, 10)
    evaluation = run(
        seq(step("a"), step("b", wait="1d")),
        now,
        now,
        recorded={"a": Recorded("sent"), "b": Recorded("skipped")},
    )
    assert evaluation == Evaluation(finished=True, contact=ContactState(DENVER))


# ======================================== project


def test_project_webinar_plan() -> None:
    webinar = L(DENVER, 2026, 3, 12, 19)
    enrolled = L(DENVER, 2026, 3, 9, 15)
    state = EnrollmentState(enrolled, webinar)
    plan = project(
        {"w": (WEBINAR, state)},
        ContactState(DENVER),
        enrolled,
        enrolled + timedelta(days=30),
        delivery(),
    )
    assert [(p.step, p.at) for p in plan] == [
        ("registered", enrolled),
        ("day-before", L(DENVER, 2026, 3, 11, 19)),
        ("replay", L(DENVER, 2026, 3, 13, 8)),
        ("offer", L(DENVER, 2026, 3, 15, 9)),
    ]
    attended = ContactState(DENVER, frozenset({"webinar-attended"}))
    plan = project({"w": (WEBINAR, state)}, attended, enrolled, L(DENVER, 2026, 3, 14), delivery())
    assert [p.step for p in plan] == ["registered", "day-before", "thank-you"]
    client = ContactState(DENVER, frozenset({"client"}))
    plan = project({"w": (WEBINAR, state)}, client, enrolled, enrolled + timedelta(days=30), delivery())
    assert [(p.step, p.at) for p in plan] == [("registered", enrolled), ("day-before", L(DENVER, 2026, 3, 11, 19))]
    plan = project(
        {"w": (WEBINAR, state)}, client, enrolled, enrolled + timedelta(days=30), delivery(), goal_skips=True
    )
    assert [(p.step, p.at, p.skipped) for p in plan] == [
        ("registered", enrolled, None),
        ("day-before", L(DENVER, 2026, 3, 11, 19), None),
        # decided when the replay's window opens (08:00), like a run would
        ("replay", L(DENVER, 2026, 3, 13, 8), "goal reached: tag client"),
        ("thank-you", L(DENVER, 2026, 3, 13, 8), "goal reached: tag client"),
        ("offer", L(DENVER, 2026, 3, 15, 9), "goal reached: tag client"),
    ]


def test_project_spaces_marketing_across_sequences() -> None:
    now = L(LONDON, 2026, 3, 27, 10)  # Friday
    sequences = {
        "one": (seq(step("a")), EnrollmentState(now)),
        "two": (seq(step("b")), EnrollmentState(now)),
    }
    plan = project(sequences, ContactState(LONDON), now, now + timedelta(days=7), delivery(send_days=WEEKDAYS))
    assert [(p.sequence, p.step, p.at) for p in plan] == [
        ("one", "a", now),
        ("two", "b", Z(2026, 3, 30, 7)),  # Monday 08:00 BST: not Saturday, and not late
    ]


def test_project_skips_what_a_run_would_skip() -> None:
    enrolled = L(DENVER, 2026, 3, 9, 10)
    state = EnrollmentState(enrolled)
    plan = project(
        {"s": (seq(step("a")), state)},
        ContactState(DENVER),
        enrolled + timedelta(days=5),
        enrolled + timedelta(days=10),
        delivery(),
    )
    assert plan == []


# ======================================== edits: steps added later


@pytest.mark.parametrize(
    ("introduced", "expected"),
    [
        # the step appeared in sequences.yaml after its due time had passed for this person
        (L(DENVER, 2026, 3, 12, 9), "skip: added after its time"),
        # it appeared before its due time: it applies like any other step
        (L(DENVER, 2026, 3, 10, 9), "send"),
        (L(DENVER, 2026, 3, 11, 9), "send"),  # exactly at its due time
    ],
)
def test_a_step_added_later_reaches_only_those_not_past_it(introduced: datetime, expected: str) -> None:
    sequence = seq(step("a", wait="1d", transactional=True))
    enrolled = L(DENVER, 2026, 3, 10, 9)
    evaluation = evaluate(
        sequence,
        EnrollmentState(enrolled, None, {}, {"a": introduced}),
        ContactState(DENVER),
        L(DENVER, 2026, 3, 12, 10),
        delivery(),
    )
    assert outcome(evaluation) == expected


# ======================================== care: the goal keeps the recording; late registrants


def test_after_goal_step_still_goes_once_the_goal_is_reached() -> None:
    enrolled = L(DENVER, 2026, 3, 9, 10)
    sequence = seq(
        step("replay", wait="1d", after_goal=True),
        step("offer", wait="2d"),
        exit_on_tags=("client",),
    )
    evaluation = run(sequence, enrolled, enrolled + timedelta(days=1), tags=frozenset({"client"}))
    assert outcome(evaluation, "replay") == "send"
    assert outcome(evaluation, "offer") == "wait"  # the goal is decided at the offer's own time
    later = run(
        sequence,
        enrolled,
        enrolled + timedelta(days=3),
        tags=frozenset({"client"}),
        recorded={"replay": Recorded("sent")},
    )
    assert outcome(later, "offer") == "skip: goal reached: tag client"
    assert later.finished and later.goal == "goal reached: tag client"


def test_after_goal_step_keeps_the_send_window() -> None:
    enrolled = L(DENVER, 2026, 3, 9, 10)
    sequence = seq(step("replay", wait="12h", after_goal=True), exit_on_tags=("client",))
    evaluation = run(sequence, enrolled, L(DENVER, 2026, 3, 9, 22), tags=frozenset({"client"}))
    assert outcome(evaluation, "replay") == "wait"
    assert evaluation.wake_at == L(DENVER, 2026, 3, 10, 8)


@pytest.mark.parametrize(
    ("minutes_before", "day_before", "hour_before"),
    [
        (65, "skip: before enrollment", "skip: too soon after the confirmation (within 2h)"),
        (30, "skip: before enrollment", "skip: before enrollment"),
        (150, "skip: before enrollment", "skip: too soon after the confirmation (within 2h)"),
        (190, "skip: before enrollment", "send"),
        (25 * 60, "skip: too soon after the confirmation (within 2h)", "send"),
        (27 * 60, "send", "send"),
    ],
)
def test_reminder_within_the_gap_of_the_confirmation_is_skipped(
    minutes_before: int, day_before: str, hour_before: str
) -> None:
    start = L(DENVER, 2026, 3, 12, 19)
    enrolled = start - timedelta(minutes=minutes_before)
    sequence = seq(
        step("registered", wait="0m", transactional=True),
        step("day-before", webinar="-1d", transactional=True),
        step("hour-before", webinar="-1h", transactional=True),
    )
    dl = delivery(reminder_gap="2h")
    seen: dict[str, str] = {}
    for now in (enrolled, start - timedelta(days=1), start - timedelta(hours=1)):
        recorded = {k: Recorded("sent") for k, v in seen.items() if v == "send"}
        evaluation = run(sequence, enrolled, max(now, enrolled), webinar_start=start, dl=dl, recorded=recorded)
        for name in ("registered", "day-before", "hour-before"):
            if name not in seen and outcome(evaluation, name) != "wait":
                seen[name] = outcome(evaluation, name)
    assert seen == {"registered": "send", "day-before": day_before, "hour-before": hour_before}


def test_no_reminder_gap_by_default() -> None:
    start = L(DENVER, 2026, 3, 12, 19)
    enrolled = start - timedelta(minutes=65)
    sequence = seq(step("registered", transactional=True), step("hour-before", webinar="-1h", transactional=True))
    evaluation = run(sequence, enrolled, start - timedelta(hours=1), webinar_start=start)
    assert outcome(evaluation, "hour-before") == "send"


def test_a_reminder_due_before_she_was_stored_does_not_apply_though_waits_count_from_her_signup() -> None:
    """A late export (`signed_up_at`): "Tomorrow at..." is not sent on the day itself; a stale wait shows late."""
    sequence = Sequence(
        steps=(
            Step(id="registered", wait=parse_duration("0m"), transactional=True, subject="s", template="t.md"),
            Step(
                id="day-before",
                webinar=parse_duration("-1d", signed=True),
                transactional=True,
                subject="s",
                template="t.md",
            ),
        )
    )
    delivery = Delivery(max_late=parse_duration("3d"))
    signed_up, stored, start = Z(2027, 1, 7, 12), Z(2027, 1, 14, 9), Z(2027, 1, 15, 2)
    state = EnrollmentState(enrolled_at=signed_up, webinar_start=start, imported_at=stored)
    result = evaluate(sequence, state, ContactState(tz=DENVER), stored, delivery)
    reasons = {s.step.id: s.reason for s in result.skips}
    assert reasons["day-before"] == "before enrollment" and reasons["registered"].startswith("late by 6 days")
    assert not result.sends
    # stored before the day before: the reminder goes at its time
    early = EnrollmentState(enrolled_at=signed_up, webinar_start=start, imported_at=Z(2027, 1, 13, 9))
    later = evaluate(sequence, early, ContactState(tz=DENVER), Z(2027, 1, 14, 2), delivery)
    assert [s.step.id for s in later.sends] == ["day-before"]
