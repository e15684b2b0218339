"""The schedule: pure decisions from (state, config, now). No I/O, no clock.

Every rule of the spec's section 3.1 lives here, and nowhere else: due times, send
windows and gaps, lateness, tag conditions and goals, webinar timing. Keeping them
pure lets each rule be tested with fixed times, and lets `funnel plan` project the
same decisions forward without writing anything. `evaluate` returns what to do now
for one enrollment and when to look again; the caller turns that into claims, sends
and rows. The rules one by one are in `evaluate`'s docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, time, timedelta
from functools import lru_cache
from zoneinfo import ZoneInfo

from funnel.config import DAY_NAMES, Delivery, Sequence, Step
from funnel.timeutil import add_duration, describe_delay, local_wall

#: statuses of a recorded step that end it for scheduling purposes
TERMINAL = frozenset({"sent", "skipped", "unknown", "sending"})
#: the latest due time the schedule works with: later ones (a webinar start in year
#: 9999 plus an offset) are skipped, so window and gap arithmetic can never overflow
LATEST = datetime(9000, 1, 1, tzinfo=UTC)
#: why a step about a webinar still to come is not sent once it has started
WEBINAR_BEGUN = "the webinar had already begun"
NO_WEBINAR_DATE = "no webinar date"
OUT_OF_RANGE = "due time out of range"
#: how a step skipped because the sequence's goal was reached is explained
GOAL_REACHED = "goal reached"
#: the tag "just the webinar emails" gives her (`funnel.preferences`): every sequence's goal
LETTERS_STOPPED = "letters-stopped"
#: how a reminder skipped for coming too soon after the confirmation is explained
TOO_SOON = "too soon after the confirmation"


@dataclass(frozen=True)
class ContactState:
    """What the schedule needs to know about a person."""

    tz: ZoneInfo
    tags: frozenset[str] = frozenset()
    #: why nothing may be sent (unsubscribed, bounce, erased, ...), or None
    suppressed: str | None = None
    last_marketing_at: datetime | None = None


@dataclass(frozen=True)
class Recorded:
    """A step's row, as far as scheduling cares."""

    status: str
    retryable: bool = False
    reason: str | None = None


@dataclass(frozen=True)
class EnrollmentState:
    enrolled_at: datetime
    webinar_start: datetime | None = None
    recorded: Mapping[str, Recorded] = field(default_factory=dict)
    #: when each step first appeared in sequences.yaml (a step added later reaches
    #: only those who have not passed its due time); missing ids: there from the start
    introduced: Mapping[str, datetime] = field(default_factory=dict)
    #: when funnel stored the enrollment: later than `enrolled_at` when an export said she signed up
    #: earlier (`signed_up_at`); None: the same moment. A step already known then is no "added" step.
    imported_at: datetime | None = None


@dataclass(frozen=True)
class Send:
    step: Step
    due_at: datetime


@dataclass(frozen=True)
class Skip:
    step: Step
    due_at: datetime | None
    reason: str


@dataclass(frozen=True)
class Evaluation:
    """What to do for one enrollment now.

    `exit_reason` set means the contact leaves the sequence (nothing more is
    sent); `finished` means every step has an outcome once `sends` go out;
    `wake_at` is when to look again (None when nothing is left).
    """

    sends: tuple[Send, ...] = ()
    skips: tuple[Skip, ...] = ()
    exit_reason: str | None = None
    finished: bool = False
    wake_at: datetime | None = None
    contact: ContactState | None = None
    #: the sequence's goal was reached (a tag of `exit_on_tags`): once `finished`, the
    #: enrollment ends as exited with this reason and does not go on to `next`
    goal: str | None = None


# --------------------------------------------------------------------------- due times


def due_times(
    sequence: Sequence, enrolled_at: datetime, webinar_start: datetime | None, tz: ZoneInfo
) -> dict[str, datetime | None]:
    """Each step's due time (UTC), or None for a webinar step without a webinar date
    and for a due time out of range (see `LATEST`; `skip_reason_without_due` tells which)."""
    result: dict[str, datetime | None] = {}
    anchor = enrolled_at
    for step in sequence.timed_steps:  # an `on:` step has no time: it answers a session's change
        due: datetime | None = None
        try:
            if step.webinar is not None:
                due = add_duration(webinar_start, step.webinar, tz) if webinar_start else None
            else:
                assert step.wait is not None
                due = add_duration(anchor, step.wait, tz)
            if due is not None and step.at is not None:
                due = snap_to_clock(due, step.at, tz)
        except (OverflowError, ValueError):
            due = None
        if due is not None and due >= LATEST:
            due = None
        if due is not None:
            anchor = due
        result[step.id] = due
    return result


#: due times already computed in this process: (id of the sequence, enrolled, start, zone) -> (sequence, times)
_DUES: dict[tuple[int, datetime, datetime | None, ZoneInfo], tuple[Sequence, dict[str, datetime | None]]] = {}


def _due_times_for(
    sequence: Sequence, enrolled_at: datetime, webinar_start: datetime | None, tz: ZoneInfo
) -> dict[str, datetime | None]:
    """`due_times`, remembered: people imported together share them (one webinar, a few zones).

    The cached entry keeps its sequence, and is used only for that very object.
    """
    key = (id(sequence), enrolled_at, webinar_start, tz)
    found = _DUES.get(key)
    if found is not None and found[0] is sequence:
        return found[1]
    if len(_DUES) >= 4096:
        _DUES.clear()
    times = due_times(sequence, enrolled_at, webinar_start, tz)
    _DUES[key] = (sequence, times)
    return times


def skip_reason_without_due(step: Step, webinar_start: datetime | None) -> str:
    """Why a step has no due time: no webinar date, or a date arithmetic cannot hold."""
    return NO_WEBINAR_DATE if step.webinar is not None and webinar_start is None else OUT_OF_RANGE


def about_coming_webinar(sequence: Sequence, step: Step, due: datetime, webinar_start: datetime | None) -> bool:
    """Whether `step` speaks of a webinar still to come, so that it makes no sense once it began.

    That is a step timed before the start (`webinar: -1d`), any step due before
    the start, and a confirmation: a `wait:` step placed before the sequence's
    first webinar-timed step ("You're registered"). Steps after the webinar
    (replay, thank-you, an offer two days later) are not.
    """
    if webinar_start is None:
        return False
    if step.webinar is not None:
        return step.webinar.approx < timedelta(0) or due < webinar_start
    if due < webinar_start:
        return True
    timed = sequence.timed_steps
    ids = [s.id for s in timed]
    first_webinar = next((i for i, s in enumerate(timed) if s.webinar is not None), None)
    return first_webinar is not None and ids.index(step.id) < first_webinar


def snap_to_clock(instant: datetime, clock: time, tz: ZoneInfo) -> datetime:
    """The first moment at or after `instant` whose local time is `clock`."""
    local = instant.astimezone(tz)
    candidate = local_wall(local, clock, tz)
    if candidate < instant:
        # on a fall-back night the wall time comes round a second time, an hour later
        repeat = datetime.combine(local.date(), clock, tzinfo=tz).replace(fold=1).astimezone(UTC)
        tomorrow = local + timedelta(days=1)
        candidate = repeat if repeat >= instant else local_wall(tomorrow, clock, tz)
    return candidate


# --------------------------------------------------------------------------- windows


def _intervals(day: date, delivery: Delivery, tz: ZoneInfo) -> tuple[tuple[datetime, datetime], ...]:
    """The window's UTC intervals that fall on local date `day` (two when it wraps midnight)."""
    return _window_on(day, delivery.send_window.start, delivery.send_window.end, tz)


@lru_cache(maxsize=4096)
def _window_on(day: date, start: time, end: time, tz: ZoneInfo) -> tuple[tuple[datetime, datetime], ...]:
    """`_intervals`, remembered: a run over 100,000 people asks about the same few days and zones."""
    day_start = datetime.combine(day, time(0))
    midnight_next = local_wall(day_start + timedelta(days=1), time(0), tz)
    if start < end:
        return ((local_wall(day_start, start, tz), local_wall(day_start, end, tz)),)
    return (
        (local_wall(day_start, time(0), tz), local_wall(day_start, end, tz)),
        (local_wall(day_start, start, tz), midnight_next),
    )


def next_opening(instant: datetime, delivery: Delivery, tz: ZoneInfo) -> datetime:
    """The first moment at or after `instant` inside the send window on a send day."""
    allowed = set(delivery.send_days)
    first_day = instant.astimezone(tz).date()
    for offset in range(0, 9):
        day = first_day + timedelta(days=offset)
        if DAY_NAMES[day.weekday()] not in allowed:
            continue
        for begin, end in _intervals(day, delivery, tz):
            if instant < end and begin < end:
                return max(instant, begin)
    raise AssertionError("send_days is never empty, so an opening exists within 8 days")


def in_window(instant: datetime, delivery: Delivery, tz: ZoneInfo) -> bool:
    return next_opening(instant, delivery, tz) == instant


def opening(step: Step, due: datetime, contact: ContactState, delivery: Delivery) -> datetime:
    """The first moment `step` could go out: due, then window and gap (non-transactional)."""
    if step.transactional:
        return due
    earliest = due
    if contact.last_marketing_at is not None and delivery.min_gap.approx > timedelta(0):
        earliest = max(earliest, contact.last_marketing_at + delivery.min_gap.approx)
    return next_opening(earliest, delivery, contact.tz)


# --------------------------------------------------------------------------- decisions


def _tag_condition(step: Step, tags: frozenset[str]) -> str | None:
    """Why the step's tag condition rules it out now, or None when it applies."""
    if step.if_tags and not tags.intersection(step.if_tags):
        return "without tag " + " or ".join(step.if_tags)
    hit = sorted(tags.intersection(step.unless_tags))
    if hit:
        return "tag " + hit[0]
    return None


def evaluate(
    sequence: Sequence,
    enrollment: EnrollmentState,
    contact: ContactState,
    now: datetime,
    delivery: Delivery,
) -> Evaluation:
    """Decide, for one enrollment at `now`, which steps to send or skip and when to look again.

    The returned `contact` carries `last_marketing_at` as it will be once
    the sends go out, so the caller can evaluate the person's next
    enrollment with it (min_gap holds across sequences).

    The rules (spec section 3.1):

    - a step's *due time* is fixed at enrollment: `wait` counts from the
      previous step's due time (the enrollment time for the first), `webinar:`
      from the contact's webinar start, and `at:` then moves it to the next such
      local time; days are calendar days on the contact's wall clock;
    - a step due before the enrollment does not apply ("before enrollment"), and a
      step added to sequences.yaml after its due time had passed for someone does
      not apply to them ("added after its time");
    - non-transactional mail waits for `send_window`/`send_days` in the contact's
      timezone and for `min_gap` since their last non-transactional email;
    - lateness counts from the step's *opening* (its due time moved into the
      window and past the gap), and a step later than `max_late` is skipped;
    - `if_tags`/`unless_tags` and `exit_on_tags` are evaluated when the step is
      about to be sent; an unsubscribed or suppressed contact leaves the sequence;
    - a step about a webinar still to come (timed `webinar: -...`, due before the
      start, or a confirmation placed before the sequence's first webinar step) is
      never sent at or after the webinar's start: it is skipped, "the webinar had
      already begun";
    - a due time that date arithmetic cannot hold (beyond `LATEST`) is skipped
      with a reason instead of crashing the run;
    - a tag of `exit_on_tags` is the sequence's goal: it skips the marketing steps
      ("goal reached: tag X") and, once finished, keeps the enrollment from going
      on to `next` (`Evaluation.goal`), while transactional steps and `after_goal`
      steps (the recording she signed up for) still go;
    - a reminder due within `delivery.reminder_gap` of her signing up is skipped
      ("too soon after the confirmation").
    """
    dues = _due_times_for(sequence, enrollment.enrolled_at, enrollment.webinar_start, contact.tz)
    order = {step.id: index for index, step in enumerate(sequence.timed_steps)}
    gapless = replace(contact, last_marketing_at=None) if contact.last_marketing_at is not None else contact
    open_steps = [
        step
        for step in sequence.timed_steps
        if step.id not in enrollment.recorded
        or (enrollment.recorded[step.id].status == "failed" and enrollment.recorded[step.id].retryable)
    ]
    sends: list[Send] = []
    skips: list[Skip] = []
    waits: list[datetime] = []

    def timing_key(step: Step) -> tuple[datetime, int]:
        due = dues[step.id]
        return (due or enrollment.enrolled_at, order[step.id])

    for step in sorted(open_steps, key=timing_key):
        due = dues[step.id]
        if due is None:
            skips.append(Skip(step, None, skip_reason_without_due(step, enrollment.webinar_start)))
            continue
        if due < enrollment.enrolled_at:
            skips.append(Skip(step, due, "before enrollment"))
            continue
        if _crowds_confirmation(step, due, enrollment.enrolled_at, delivery):
            skips.append(Skip(step, due, f"{TOO_SOON} (within {delivery.reminder_gap})"))
            continue
        stored = enrollment.imported_at or enrollment.enrolled_at
        if due < stored and step.webinar is not None and step.webinar.approx < timedelta(0):
            # a reminder before the webinar ("Tomorrow at ...") counts from when funnel stored her,
            # not from when she signed up (`signed_up_at`): a late export does not send it on the
            # day itself; a `wait:` step still counts from her signup (and shows "late by ...")
            skips.append(Skip(step, due, "before enrollment"))
            continue
        introduced = enrollment.introduced.get(step.id)
        if introduced is not None and due < introduced and introduced > stored:
            skips.append(Skip(step, due, "added after its time"))
            continue
        window_start = opening(step, due, gapless, delivery)
        # (one and the same question when she has had no marketing email yet: asked once)
        start = window_start if gapless is contact else opening(step, due, contact, delivery)
        if now < window_start:
            waits.append(start)
            continue
        # the step's time has come: conditions are evaluated now, not at enrollment,
        # and before min_gap, so a step that does not apply is settled at its own time
        if contact.suppressed:
            return _exit(contact.suppressed, step, due, skips, contact)
        goal = goal_reached(sequence, contact.tags)
        if goal and not _kept_by_goal(step):
            # the goal ends the marketing steps; the transactional ones (confirmations and
            # reminders of what she signed up for) and `after_goal` ones (the recording)
            # still go. With none of those left, the sequence ends here: every marketing
            # step left is skipped now.
            settled = {x.step.id for x in sends} | {x.step.id for x in skips}
            if any(_kept_by_goal(s) for s in open_steps if s.id not in settled):
                skips.append(Skip(step, due, goal))
                continue
            skips.extend(Skip(s, dues[s.id], goal) for s in open_steps if s.id not in settled)
            return Evaluation(sends=tuple(sends), skips=tuple(skips), finished=True, contact=contact, goal=goal)
        ruled_out = _tag_condition(step, contact.tags)
        if ruled_out:
            skips.append(Skip(step, due, ruled_out))
            continue
        if now < start:  # waiting for min_gap since the last email
            waits.append(start)
            continue
        late = now - start
        if late > delivery.max_late.approx:
            skips.append(Skip(step, due, f"late by {describe_delay(late)}"))
            continue
        begun = enrollment.webinar_start
        if begun is not None and now >= begun and about_coming_webinar(sequence, step, due, begun):
            # after lateness, so a long outage still reads "late by 6 days"
            skips.append(Skip(step, due, WEBINAR_BEGUN))
            continue
        if not step.transactional:
            if not in_window(now, delivery, contact.tz):
                waits.append(next_opening(now, delivery, contact.tz))
                continue
            if contact.last_marketing_at is not None and now < contact.last_marketing_at + delivery.min_gap.approx:
                # another email of this run took the gap
                waits.append(opening(step, due, contact, delivery))
                continue
            contact = replace(contact, last_marketing_at=now)
        sends.append(Send(step, due))

    finished = not waits
    return Evaluation(
        sends=tuple(sends),
        skips=tuple(skips),
        finished=finished,
        wake_at=min(waits) if waits else None,
        contact=contact,
        goal=goal_reached(sequence, contact.tags) if finished else None,
    )


def _kept_by_goal(step: Step) -> bool:
    """Whether `step` still goes once the goal is reached: what she signed up for."""
    return step.transactional or step.after_goal


def _crowds_confirmation(step: Step, due: datetime, enrolled_at: datetime, delivery: Delivery) -> bool:
    """A reminder (`webinar: -...`) due within `delivery.reminder_gap` of her signing up.

    The confirmation goes as she signs up, so such a reminder would arrive on its
    heels ("Your place is saved" and "Starting in an hour" in the same minute);
    the confirmation, worded for the time left, says everything the reminder would.
    """
    if step.webinar is None or step.webinar.approx >= timedelta(0):
        return False
    return due < enrolled_at + delivery.reminder_gap.approx


def goal_reached(sequence: Sequence, tags: frozenset[str]) -> str | None:
    """`goal reached: tag X` when the contact has a tag of the sequence's `exit_on_tags`, else None.

    `letters-stopped` ("just the webinar emails" on the unsubscribe page,
    `funnel.preferences`) is every sequence's goal: the letters end, what she
    signed up for still goes.
    """
    if LETTERS_STOPPED in tags:
        return f"{GOAL_REACHED}: {LETTERS_STOPPED}, she chose just the webinar emails"
    hit = sorted(tags.intersection(sequence.exit_on_tags))
    return f"{GOAL_REACHED}: tag {hit[0]}" if hit else None


def _exit(reason: str, step: Step, due: datetime, skips: list[Skip], contact: ContactState) -> Evaluation:
    skips.append(Skip(step, due, "unsubscribed" if reason == "unsubscribed" else reason))
    return Evaluation(skips=tuple(skips), exit_reason=reason, contact=contact)


# --------------------------------------------------------------------------- projection


@dataclass(frozen=True)
class Planned:
    sequence: str
    step: str
    at: datetime
    #: set for a step that will not be sent (why), when `project` is asked for goal skips
    skipped: str | None = None
    #: for a step of a sequence she is not in yet: the sequence whose `next` brings her there
    via: str | None = None


@dataclass(frozen=True)
class Follow:
    """What `project` needs to follow a person into the `next` sequence of one she finishes.

    `sequences` is all of sequences.yaml; `entered` the sequences she has or had an
    enrollment in (whatever its status): a run never enrolls her in one of those
    again (one enrollment per person and sequence), so neither does the plan.
    """

    sequences: Mapping[str, Sequence]
    entered: frozenset[str] = frozenset()
    introduced: Mapping[str, Mapping[str, datetime]] = field(default_factory=dict)

    def next_state(
        self, sequence: Sequence, state: EnrollmentState, at: datetime
    ) -> tuple[str, Sequence, EnrollmentState] | None:
        """The enrollment a run makes when `sequence` finishes at `at` (see `funnel.run.finish.start_next`), or None.

        Enrolled at that moment, with the webinar of the sequence she finished.
        """
        following = sequence.next
        if not following or following not in self.sequences or following in self.entered:
            return None
        entry = EnrollmentState(at, state.webinar_start, {}, self.introduced.get(following, {}))
        return following, self.sequences[following], entry


def next_enrolled_at(
    sequence: Sequence, state: EnrollmentState, tz: ZoneInfo, now: datetime, delivery: Delivery
) -> datetime:
    """When she enters the `next` sequence of `sequence`, finished at `now`: its last step's due time.

    Not the moment a run happened to see it (a cron run at 09:10 for a step
    `at: "09:00"` would start the next sequence's `at: "09:00"` letters a day
    late); never later than `now`, never before she entered `sequence`. After
    an outage longer than `max_late` (the last letters were skipped as stale)
    she starts from `now`: nothing stale is made up in the next sequence.
    Runs (`funnel.run.finish.start_next`) and the plan (`project`) both use it, so they agree.
    """
    dues = [d for d in due_times(sequence, state.enrolled_at, state.webinar_start, tz).values() if d is not None]
    latest = max(dues, default=now)
    if now - latest > delivery.max_late.approx:
        return now
    return max(state.enrolled_at, min(now, latest))


def project(
    sequences: Mapping[str, tuple[Sequence, EnrollmentState]],
    contact: ContactState,
    now: datetime,
    until: datetime,
    delivery: Delivery,
    *,
    goal_skips: bool = False,
    follow: Follow | None = None,
) -> list[Planned]:
    """Simulate one person's coming sends from `now` to `until` with today's tags.

    Used by `funnel plan`: it replays `evaluate` at each moment something
    becomes possible, so the plan follows exactly the rules a run follows
    (windows, gaps across sequences, lateness, tags). With `follow`, a
    sequence finished within the window (not ended by its goal, an
    unsubscribe or a suppression) goes on to its `next` as a run would: she
    is enrolled at the moment the last step is settled, and the new
    sequence's steps are planned from there (`via` names the sequence she
    came from). With `goal_skips`, the
    marketing steps a reached goal will skip are listed too (`skipped` set,
    at their due time), so the plan can say why they do not go.
    """
    planned: list[Planned] = []
    states = dict(sequences)
    via: dict[str, str] = {}
    clock = now
    for _ in range(1000):  # bounded: every iteration records or moves time forward
        wakes: list[datetime] = []
        progressed = False
        for sid, (sequence, state) in sorted(states.items()):
            evaluation = evaluate(sequence, state, contact, clock, delivery)
            if evaluation.contact is not None:
                contact = evaluation.contact
            recorded = dict(state.recorded)
            for send in evaluation.sends:
                planned.append(Planned(sid, send.step.id, clock, via=via.get(sid)))
                recorded[send.step.id] = Recorded("sent")
                progressed = True
            for skip in evaluation.skips:
                recorded[skip.step.id] = Recorded("skipped", reason=skip.reason)
                progressed = True
                if goal_skips and skip.reason.startswith(GOAL_REACHED):
                    due = skip.due_at if skip.due_at and skip.due_at > clock else clock
                    planned.append(Planned(sid, skip.step.id, due, skipped=skip.reason, via=via.get(sid)))
            if evaluation.exit_reason or evaluation.finished:
                recorded.update({s.id: Recorded("skipped") for s in sequence.timed_steps if s.id not in recorded})
            states[sid] = (sequence, replace(state, recorded=recorded))
            if follow is not None and evaluation.finished and not evaluation.exit_reason and not evaluation.goal:
                entry = follow.next_state(
                    sequence, state, next_enrolled_at(sequence, state, contact.tz, clock, delivery)
                )
                if entry is not None and entry[0] not in states:
                    states[entry[0]] = (entry[1], entry[2])
                    via[entry[0]] = sid
                    progressed = True
            if evaluation.wake_at is not None and not evaluation.exit_reason:
                wakes.append(evaluation.wake_at)
        if progressed:
            continue
        if not wakes or min(wakes) > until:
            break
        clock = max(min(wakes), clock)
    return planned


# --------------------------------------------------------------------------- first look


def first_look(
    sequence: Sequence, enrolled_at: datetime, webinar_start: datetime | None, tz: ZoneInfo, delivery: Delivery
) -> datetime:
    """When a run first needs to look at an enrollment made at `enrolled_at` (its `next_due_at`).

    `enrolled_at` itself unless no step can be sent or skipped before a later
    moment: then the earliest moment a step opens (its due time moved into
    the window; the gap since an earlier email only moves it later). Looking
    earlier than needed is harmless, later never happens: a step with no due
    time, or due before the enrollment, is looked at at once. So an import at
    night does not ask the run to decide 100,000 times that nothing is due.
    """
    gapless = ContactState(tz=tz)
    earliest: datetime | None = None
    dues = due_times(sequence, enrolled_at, webinar_start, tz)
    for step, due in zip(sequence.timed_steps, dues.values(), strict=True):
        if due is None or due < enrolled_at:
            return enrolled_at
        start = opening(step, due, gapless, delivery)
        if start <= enrolled_at:
            return enrolled_at
        earliest = start if earliest is None else min(earliest, start)
    return earliest or enrolled_at
