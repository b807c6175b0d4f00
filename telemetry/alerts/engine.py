"""The alert engine: per-device state machines on event time, deterministic, no I/O.

Three inputs move it, and each one carries its own time (nothing here reads a clock):
- ``process(readings, received_at)``: readings of any devices, in any order;
- ``tick(now)``: time passing without readings (delays expiring, devices going silent);
- ``status(device_id, "online"|"offline", at)``: the device's MQTT status (last will).
People act through ``acknowledge``/``resolve``; ``assign`` puts a device on a profile.
Every call returns the ``AlertEvent``s it caused, in order, for the outputs to publish.

Time model
----------
Rules are judged on the readings' timestamps (event time), one device at a time in
timestamp order; a reading's value holds until the next one (see machines.py). Each
device keeps its state at a high-water mark ``hwm``: the newest reading's time, or later
when tick() decided something from the held value.

Late data
---------
A reading at or after ``hwm`` is judged normally. If it arrived more than
``late_after_s`` after its own time (a logger flushing what it buffered in a dead zone),
any alert it raises is marked ``found_late``.

A reading *before* ``hwm`` can't be fed to the live machines without rewinding them.
Instead the batch's late readings of a device go through a separate replay: fresh
machines run over a reconstructed timeline of that span (the late readings, the device's
newest reading, and, when the caller passes ``history``, the stored readings of the span
and a lookback before it). Each excursion the replay finds that contains late readings
and overlaps no alert already known for the same (device, rule) is raised with
``found_late=True``, and resolved at once if it also ended inside the span. An excursion
still running at the end is handed to the live machine, which then clears it normally;
a pending condition that the late data shows started earlier is moved back. Cumulative
budgets have their exposure inside the span replaced by the replay's, and a budget
crossing found in it is raised (late) at the moment the total reached the budget.

Without ``history`` the replay only knows the late readings and the judged readings
this call has in hand (the newest before the batch, and the batch's own newer ones).
That is exact for the common case, a contiguous backfill of a gap, but when late
readings interleave with readings judged in earlier batches, the replay holds a late
value across readings it can't see, so such an excursion may come out longer or shorter
than it was; and a budget correction can't see exposure that already left the sliding
window. A late
reading never retracts an alert already raised: the alert stands and resolves through
its clear condition, with its trail.

Restart
-------
``snapshot()`` is plain JSON: every machine's pending/clear timers, budgets' exposure,
open and recently resolved alerts, the devices' high-water marks. ``restore()`` rebuilds
the engine from it and the current profiles, so a delay that was running raises on time
(at ``pending_since + delay`` in event time) either on the next reading or on tick().
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from operator import itemgetter
from typing import Any

from telemetry.alerts.lifecycle import (
    SYSTEM,
    Action,
    Alert,
    AlertEvent,
    AuditEntry,
    EventKind,
    LifecycleError,
    UnknownAlert,
    acknowledged,
    resolved,
    resolved_by_hand,
    site_changed,
    with_peak,
)
from telemetry.alerts.machines import (
    CLEARED,
    PEAK,
    RAISED,
    BudgetMachine,
    DurationMachine,
    Machine,
)
from telemetry.alerts.rules import (
    BatteryLowRule,
    BudgetRule,
    DoorOpenRule,
    LimitRule,
    OfflineRule,
    Profile,
    Rule,
)
from telemetry.alerts.settings import AlertSettings
from telemetry.readings import Reading

log = logging.getLogger(__name__)

SNAPSHOT_FORMAT = "origincast.alerts/1"

# The readings stored for one device in [start, end], any order; the store implements it.
# Synchronous on purpose: the ingest writer is a thread, and the engine stays free of I/O
# policy (the caller decides where the readings come from).
History = Callable[[str, datetime, datetime], Sequence[Reading]]

_TS = itemgetter(1)  # Reading.ts, as a sort key without a lambda call per reading
_ZERO = timedelta(0)


def _aware(t: datetime, name: str) -> None:
    if t.tzinfo is None:
        raise ValueError(f"{name} must be timezone-aware (UTC), got {t!r}")


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat()


def _dt(s: str | None) -> datetime | None:
    return None if s is None else datetime.fromisoformat(s)


def _machines(profile: Profile | None) -> list[Machine]:
    out: list[Machine] = []
    for rule in profile.rules if profile else ():
        if isinstance(rule, (LimitRule, BatteryLowRule, DoorOpenRule)):
            out.append(DurationMachine.for_rule(rule))
        elif isinstance(rule, BudgetRule):
            out.append(BudgetMachine.for_rule(rule))
    return out


def _record(
    rm: DurationMachine, f: int, found: list[_Excursion], cur: _Excursion | None
) -> _Excursion | None:
    """Collect a replay machine's transitions into excursions; returns the running one."""
    if f & RAISED:
        assert rm.start is not None and rm.raised_at is not None
        cur = _Excursion(rm.start, rm.raised_at, rm.peak, rm.peak_at)
        found.append(cur)
    if f & PEAK and cur is not None:
        cur.peak, cur.peak_at = rm.peak, rm.peak_at
    if f & CLEARED and cur is not None:
        cur.cleared_at = rm.cleared_at
        cur = None
    return cur


def _clear_text(rule: Rule) -> str:
    if isinstance(rule, LimitRule):
        op = "≤" if rule.direction.value == "above" else "≥"
        return (
            f"clear condition held: {rule.metric.value} {op} {rule.clear_point:g} for {rule.clear_for_s:g} s"
        )
    if isinstance(rule, BatteryLowRule):
        return f"clear condition held: battery_v ≥ {rule.below_v + rule.clear_hysteresis_v:g}"
    if isinstance(rule, DoorOpenRule):
        return "clear condition held: door closed"
    if isinstance(rule, BudgetRule):
        return "clear condition held: exposure within the window back under the budget"
    return "clear condition held"


def _threshold(rule: Rule) -> tuple[str | None, float | None]:
    if isinstance(rule, (LimitRule, BudgetRule)):
        return rule.metric.value, rule.threshold
    if isinstance(rule, BatteryLowRule):
        return "battery_v", rule.below_v
    if isinstance(rule, DoorOpenRule):
        return "door_open", None
    return None, None


@dataclass(slots=True)
class _Device:
    id: str
    profile: Profile | None = None
    machines: list[Machine] = field(default_factory=list)
    last: Reading | None = None  # the newest reading judged
    hwm: datetime | None = None  # event time the machines are judged up to (≥ last.ts)
    last_rx: datetime | None = None  # when `last` was received: last_rx - last.ts is the lag
    seen_at: datetime | None = None  # last sign of life: a reading received, or "online"
    rules_from: datetime | None = None  # readings before this are in the ignore period
    await_first: bool = True  # the next reading (re)starts the ignore period
    will_at: datetime | None = None  # the broker reported "offline" (last will) at
    offline_alert: int | None = None
    offline_silenced: bool = False  # resolved by hand while silent: wait for a sign of life
    down: bool = False  # any of the three above is set: the next sign of life has work to do
    assigned_at: datetime | None = None
    # The profile's offline rule and its timers, looked up once: tick() checks every device.
    offline: OfflineRule | None = None
    offline_after: timedelta = _ZERO
    will_grace: timedelta = _ZERO

    def set_profile(self, profile: Profile | None) -> None:
        self.profile = profile
        self.machines = _machines(profile)
        self.offline = profile.offline if profile else None
        if self.offline is not None:
            self.offline_after = timedelta(seconds=self.offline.timeout_s)
            self.will_grace = timedelta(seconds=self.offline.will_grace_s)

    def sync_down(self) -> None:
        self.down = self.will_at is not None or self.offline_alert is not None or self.offline_silenced


@dataclass(slots=True)
class _Excursion:
    """One alert interval found by the late-data replay."""

    start: datetime
    raised_at: datetime
    peak: float | None
    peak_at: datetime | None
    cleared_at: datetime | None = None


@dataclass(slots=True)
class AlertEngine:
    """See the module doc. Not thread-safe: one engine per deployment, driven from one
    thread (the ingest writer) or behind one lock, since it owns every device's state."""

    profiles: dict[str, Profile]
    settings: AlertSettings = field(default_factory=AlertSettings)
    _devices: dict[str, _Device] = field(default_factory=dict, init=False, repr=False)
    _alerts: dict[int, Alert] = field(default_factory=dict, init=False, repr=False)
    # (device, rule) → ids of its alerts still held (open, or resolved recently): for
    # "one excursion is one alert" across late data and re-assignments.
    _by_rule: dict[tuple[str, str], list[int]] = field(default_factory=dict, init=False, repr=False)
    # Devices with a timer running (a delay, a clear, a budget): tick() visits only these.
    # A dict as an ordered set: iteration order, hence event order, is deterministic.
    _watch: dict[str, None] = field(default_factory=dict, init=False, repr=False)
    _resolved_queue: deque[tuple[datetime, int]] = field(default_factory=deque, init=False, repr=False)
    _next_id: int = field(default=1, init=False)
    # Derived from settings once: building a timedelta costs ~0.4 µs, per process() call.
    _late_after: timedelta = field(init=False, default=_ZERO, repr=False)

    def __post_init__(self) -> None:
        self.profiles = dict(self.profiles)
        self._late_after = timedelta(seconds=self.settings.late_after_s)
        dp = self.settings.default_profile
        if dp is not None and dp not in self.profiles:
            raise ValueError(f"default profile {dp!r} is not among the profiles ({', '.join(self.profiles)})")

    # -- queries ---------------------------------------------------------------------------

    def alert(self, alert_id: int) -> Alert:
        try:
            return self._alerts[alert_id]
        except KeyError:
            raise UnknownAlert(f"no alert {alert_id}") from None

    def alerts(self, device_id: str | None = None, *, open_only: bool = False) -> list[Alert]:
        return [
            a
            for a in self._alerts.values()
            if (device_id is None or a.device_id == device_id) and (not open_only or a.is_open)
        ]

    def profile_of(self, device_id: str) -> str | None:
        dev = self._devices.get(device_id)
        if dev is None:
            return self.settings.default_profile
        return dev.profile.id if dev.profile else None

    # -- readings ----------------------------------------------------------------------------

    def process(
        self, readings: Iterable[Reading], received_at: datetime, history: History | None = None
    ) -> list[AlertEvent]:
        """Judge a batch of readings (any devices, any order) received at ``received_at``."""
        _aware(received_at, "received_at")
        events: list[AlertEvent] = []
        late: dict[str, list[Reading]] | None = None
        # For devices with late readings: the readings already judged that this call knows
        # of (the newest before the batch, the batch's in-order ones), for the replay.
        known: dict[str, list[Reading]] = {}
        late_after = self._late_after
        devices = self._devices
        watch = self._watch
        cur_id: str | None = None
        dev: _Device | None = None
        # Stable sort by time: each device's readings come out in ts order; for a batch
        # that is already in order (the usual case) Timsort is one linear pass.
        for r in sorted(readings, key=_TS):
            did = r[0]
            if did != cur_id:
                dev = devices.get(did)
                if dev is None:
                    dev = self._new_device(did)
                cur_id = did
            assert dev is not None
            ts = r[1]
            dev.seen_at = received_at
            if dev.down:
                self._alive(dev, received_at, events)
            hwm = dev.hwm
            if hwm is not None and ts <= hwm:
                last = dev.last
                if last is not None and ts == last[1]:
                    continue  # redelivered: the store keys readings on (device, ts) too
                if late is None:
                    late = {}
                if did not in late:
                    late[did] = []
                    known[did] = [] if dev.last is None else [dev.last]
                late[did].append(r)
                continue
            if late is not None and did in late:
                known[did].append(r)
            dev.last = r
            dev.hwm = ts
            dev.last_rx = received_at
            if dev.await_first:
                self._start_ignore(dev, ts)
            if ts < dev.rules_from:  # type: ignore[operator]  # set by _start_ignore
                continue
            for m in dev.machines:
                v = r[m.idx]
                if v is None:
                    continue  # this reading says nothing about that field: the last value holds
                if m.busy or m.trips(v, m.trip):
                    # The slow path: something may change. Most readings never get here.
                    found_late = received_at - ts > late_after
                    if m.busy:
                        f = m.advance(ts)
                        if f:
                            self._apply(dev, m, f, received_at, found_late, events)
                    f = m.feed(ts, v)
                    if f:
                        self._apply(dev, m, f, received_at, found_late, events)
                    if m.busy:
                        watch[did] = None
        if late:
            for did, rs in late.items():
                self._late_pass(devices[did], rs, known[did], received_at, history, events)
        return events

    # -- time --------------------------------------------------------------------------------

    def tick(self, now: datetime) -> list[AlertEvent]:
        """Let time pass to ``now`` (server time): delays and clears that expire while a
        device's last value holds, devices that went silent, old resolved alerts."""
        _aware(now, "now")
        events: list[AlertEvent] = []
        s = self.settings
        grace = timedelta(seconds=s.tick_grace_s)
        max_hold = timedelta(seconds=s.max_hold_s)
        for did in list(self._watch):
            dev = self._devices[did]
            if not any(m.busy for m in dev.machines):
                del self._watch[did]
                continue
            last = dev.last
            if last is None or dev.hwm is None or dev.last_rx is None or dev.will_at is not None:
                continue  # declared offline: its last value is not extrapolated
            # The device's clock now: server time minus the lag its newest reading had.
            t = now - (dev.last_rx - last[1]) - grace
            cap = last[1] + max_hold
            if t > cap:
                t = cap
            if t <= dev.hwm:
                continue
            decided: datetime | None = None
            for m in dev.machines:
                if m.busy:
                    f = m.advance(t)
                    if f:
                        moment = m.raised_at if f & RAISED else m.cleared_at
                        assert moment is not None
                        decided = moment if decided is None or moment > decided else decided
                        self._apply(dev, m, f, now, False, events)
            if decided is not None and decided > dev.hwm:
                # Judged up to here on the held value; earlier readings arriving now are late.
                dev.hwm = decided
        self._check_offline(now, events)
        self._evict(now)
        return events

    def status(self, device_id: str, status: str, at: datetime) -> list[AlertEvent]:
        """The device's MQTT status changed (``offline`` is usually its last will)."""
        _aware(at, "at")
        if status not in ("online", "offline"):
            raise ValueError(f"status must be 'online' or 'offline', got {status!r}")
        events: list[AlertEvent] = []
        dev = self._devices.get(device_id) or self._new_device(device_id)
        if status == "online":
            if dev.seen_at is None or at > dev.seen_at:
                dev.seen_at = at
            self._alive(dev, at, events)
        else:
            if dev.will_at is None:
                dev.will_at = at
                dev.sync_down()
            self._check_device_offline(dev, at, events)
        return events

    # -- people ----------------------------------------------------------------------------

    def acknowledge(self, alert_id: int, user: str, comment: str, at: datetime) -> AlertEvent:
        _aware(at, "at")
        a = acknowledged(self.alert(alert_id), user, comment, at)
        self._alerts[a.id] = a
        return AlertEvent(EventKind.ACKNOWLEDGED, a)

    def resolve(self, alert_id: int, user: str, comment: str, at: datetime) -> AlertEvent:
        """Resolve by hand, with a comment (the corrective action)."""
        _aware(at, "at")
        a = resolved_by_hand(self.alert(alert_id), user, comment, at)
        self._alerts[a.id] = a
        self._resolved_queue.append((at, a.id))
        dev = self._devices.get(a.device_id)
        if dev is not None:
            if dev.offline_alert == a.id:
                dev.offline_alert = None
                dev.offline_silenced = True
                dev.sync_down()
            for m in dev.machines:
                if m.alert_id == a.id:
                    m.resolved_by_hand()
        return AlertEvent(EventKind.RESOLVED, a)

    def move_site(
        self, device_id: str, site_from: str | None, site_to: str | None, by: str, at: datetime
    ) -> list[AlertEvent]:
        """The device was put on another site: each of its alerts not resolved yet records
        the move (sites are the service's business; the trail is the engine's)."""
        _aware(at, "at")
        if site_from == site_to:
            return []
        events: list[AlertEvent] = []
        for a in sorted(self.alerts(device_id, open_only=True), key=lambda x: x.id):
            a = site_changed(a, by, site_from, site_to, at)
            self._alerts[a.id] = a
            events.append(AlertEvent(EventKind.UPDATED, a))
        return events

    def assign(self, device_id: str, profile_id: str | None, at: datetime) -> list[AlertEvent]:
        """Put a device on a profile (a new shipment): rule state starts over, with the
        profile's ignore period from ``at`` and from the next reading. Open alerts stay
        open; the new profile's rule of the same id takes each over (so it can clear)."""
        _aware(at, "at")
        if profile_id is not None and profile_id not in self.profiles:
            raise KeyError(f"unknown profile {profile_id!r}")
        profile = None if profile_id is None else self.profiles[profile_id]
        dev = self._devices.get(device_id) or self._new_device(device_id)
        dev.set_profile(profile)
        dev.assigned_at = at
        dev.rules_from = at + timedelta(seconds=profile.ignore_s if profile else 0)
        dev.await_first = True
        for m in dev.machines:
            a = self._open_alert_for(device_id, m.rule.id)
            if a is not None:
                m.adopt_alert(a.id, a.peak, a.peak_at)
                self._watch[device_id] = None
        return []

    # -- restart -----------------------------------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Everything needed to continue after a restart, as plain JSON values."""
        return {
            "format": SNAPSHOT_FORMAT,
            "next_id": self._next_id,
            "devices": {
                d.id: {
                    "profile": d.profile.id if d.profile else None,
                    "last": None if d.last is None else [*d.last[:1], d.last[1].isoformat(), *d.last[2:]],
                    "hwm": _iso(d.hwm),
                    "last_rx": _iso(d.last_rx),
                    "seen_at": _iso(d.seen_at),
                    "rules_from": _iso(d.rules_from),
                    "await_first": d.await_first,
                    "will_at": _iso(d.will_at),
                    "offline_alert": d.offline_alert,
                    "offline_silenced": d.offline_silenced,
                    "assigned_at": _iso(d.assigned_at),
                    "machines": {m.rule.id: {"kind": m.rule.kind, **m.to_state()} for m in d.machines},
                }
                for d in self._devices.values()
            },
            "alerts": [a.to_dict() for a in self._alerts.values()],
            "resolved_queue": [[t.isoformat(), i] for t, i in self._resolved_queue],
            # tick() visits devices in this order, so its events keep their order after a restart.
            "watch": list(self._watch),
        }

    @classmethod
    def restore(
        cls,
        snapshot: Mapping[str, Any],
        profiles: Mapping[str, Profile],
        settings: AlertSettings | None = None,
    ) -> AlertEngine:
        """Rebuild from ``snapshot()`` with the profiles as they are now. A machine's state
        is restored by rule id and kind; a rule that no longer exists leaves its open
        alert open (for a person), and a new rule starts empty. A device whose profile is
        gone falls back to the default profile."""
        if snapshot.get("format") != SNAPSHOT_FORMAT:
            raise ValueError(f"not an alert engine snapshot of format {SNAPSHOT_FORMAT!r}")
        eng = cls(dict(profiles), settings or AlertSettings())
        eng._next_id = snapshot["next_id"]
        for ad in snapshot["alerts"]:
            a = Alert.from_dict(ad)
            eng._alerts[a.id] = a
            eng._by_rule.setdefault((a.device_id, a.rule_id), []).append(a.id)
        eng._resolved_queue = deque((datetime.fromisoformat(t), i) for t, i in snapshot["resolved_queue"])
        eng._watch = dict.fromkeys(snapshot["watch"])
        for did, ds in snapshot["devices"].items():
            pid = ds["profile"]
            profile = eng.profiles.get(pid) if pid is not None else None
            if pid is not None and profile is None:
                log.warning("device %s: profile %r is gone; using the default profile", did, pid)
                dp = eng.settings.default_profile
                profile = eng.profiles.get(dp) if dp else None
            dev = _Device(did)
            dev.set_profile(profile)
            last = ds["last"]
            if last is not None:
                dev.last = Reading(last[0], datetime.fromisoformat(last[1]), *last[2:])
            dev.hwm = _dt(ds["hwm"])
            dev.last_rx = _dt(ds["last_rx"])
            dev.seen_at = _dt(ds["seen_at"])
            dev.rules_from = _dt(ds["rules_from"])
            dev.await_first = ds["await_first"]
            dev.will_at = _dt(ds["will_at"])
            dev.offline_alert = ds["offline_alert"]
            dev.offline_silenced = ds["offline_silenced"]
            dev.assigned_at = _dt(ds["assigned_at"])
            dev.sync_down()
            states = ds["machines"]
            for m in dev.machines:
                st = states.get(m.rule.id)
                if st is not None and st["kind"] == m.rule.kind:
                    m.load_state(st)
                    if m.alert_id is not None and m.alert_id not in eng._alerts:
                        raise ValueError(f"snapshot inconsistent: device {did} refers to alert {m.alert_id}")
                else:
                    held = eng._open_alert_for(did, m.rule.id)
                    if held is not None:
                        m.adopt_alert(held.id, held.peak, held.peak_at)
                if m.busy:
                    eng._watch[did] = None
            eng._devices[did] = dev
        return eng

    # -- internals -----------------------------------------------------------------------

    def _new_device(self, device_id: str) -> _Device:
        dp = self.settings.default_profile
        profile = self.profiles[dp] if dp is not None else None
        dev = _Device(device_id)
        dev.set_profile(profile)
        self._devices[device_id] = dev
        return dev

    def _start_ignore(self, dev: _Device, ts: datetime) -> None:
        """The first reading since start or assignment opens the ignore period."""
        ignore = timedelta(seconds=dev.profile.ignore_s if dev.profile else 0)
        begin = ts + ignore
        if dev.rules_from is None or begin > dev.rules_from:
            dev.rules_from = begin
        dev.await_first = False

    def _new_alert(
        self,
        dev: _Device,
        rule: Rule,
        start: datetime,
        raised_at: datetime,
        peak: float | None,
        peak_at: datetime | None,
        found_late: bool,
        recorded: datetime,
    ) -> Alert:
        metric, threshold = _threshold(rule)
        comment = "found in late data" if found_late else ""
        a = Alert(
            id=self._next_id,
            device_id=dev.id,
            profile_id=dev.profile.id if dev.profile else "",
            rule_id=rule.id,
            rule_kind=rule.kind,
            severity=rule.severity,  # type: ignore[union-attr]  # IgnorePeriod never raises
            start=start,
            raised_at=raised_at,
            metric=metric,
            threshold=threshold,
            peak=peak,
            peak_at=peak_at,
            found_late=found_late,
            audit=(AuditEntry(recorded, Action.RAISED, SYSTEM, comment, peak),),
        )
        self._next_id += 1
        self._alerts[a.id] = a
        self._by_rule.setdefault((dev.id, rule.id), []).append(a.id)
        return a

    def _close(
        self, alert_id: int, comment: str, recorded: datetime, cleared_at: datetime, events: list[AlertEvent]
    ) -> None:
        a = self._alerts.get(alert_id)
        if a is None or not a.is_open:
            return  # already resolved by hand: nothing left to close
        a = resolved(a, SYSTEM, comment, recorded, cleared_at)
        self._alerts[a.id] = a
        self._resolved_queue.append((recorded, a.id))
        events.append(AlertEvent(EventKind.RESOLVED, a))

    def _apply(
        self,
        dev: _Device,
        m: Machine,
        flags: int,
        recorded: datetime,
        found_late: bool,
        events: list[AlertEvent],
    ) -> None:
        """Turn a machine's transitions into alert changes and events (raise, peak, clear)."""
        if flags & RAISED:
            assert m.start is not None and m.raised_at is not None
            a = self._new_alert(dev, m.rule, m.start, m.raised_at, m.peak, m.peak_at, found_late, recorded)
            m.alert_id = a.id
            events.append(AlertEvent(EventKind.RAISED, a))
        if flags & PEAK and m.alert_id is not None and m.peak is not None and m.peak_at is not None:
            a = self._alerts[m.alert_id]
            if a.is_open:
                a = with_peak(a, m.peak, m.peak_at, recorded)
                self._alerts[a.id] = a
                events.append(AlertEvent(EventKind.UPDATED, a))
        if flags & CLEARED and m.alert_id is not None:
            assert m.cleared_at is not None
            self._close(m.alert_id, _clear_text(m.rule), recorded, m.cleared_at, events)
            m.alert_id = None

    def _open_alert_for(self, device_id: str, rule_id: str) -> Alert | None:
        for i in self._by_rule.get((device_id, rule_id), ()):
            a = self._alerts[i]
            if a.is_open:
                return a
        return None

    # -- offline ---------------------------------------------------------------------------

    def _alive(self, dev: _Device, at: datetime, events: list[AlertEvent]) -> None:
        """A sign of life (a reading received, or ``online``): the device is back."""
        if dev.offline_alert is not None:
            self._close(dev.offline_alert, "device back online", at, at, events)
            dev.offline_alert = None
        dev.will_at = None
        dev.offline_silenced = False
        dev.sync_down()

    def _check_offline(self, now: datetime, events: list[AlertEvent]) -> None:
        # O(devices) per tick (~0.15 µs each); a heap keyed by due time would make it
        # O(due) but cost a push per reading on the ingest path.
        for dev in self._devices.values():
            if dev.offline is None:
                continue
            if dev.down:  # only a last will still in its grace period can raise here
                if dev.will_at is not None and dev.offline_alert is None and not dev.offline_silenced:
                    self._check_device_offline(dev, now, events)
            elif dev.seen_at is not None and dev.seen_at + dev.offline_after <= now:
                self._check_device_offline(dev, now, events)

    def _check_device_offline(self, dev: _Device, now: datetime, events: list[AlertEvent]) -> None:
        rule = dev.offline
        if rule is None or dev.offline_alert is not None or dev.offline_silenced:
            return
        if dev.will_at is not None:  # the broker said so: only the short grace applies
            start = dev.will_at
            due = start + dev.will_grace
        elif dev.seen_at is not None:
            start = dev.seen_at
            due = start + dev.offline_after
        else:
            return
        if due <= now:
            # Offline is judged on arrival (server) time, not event time: it is about the
            # connection, and a logger's clock says nothing about whether it is reachable.
            a = self._new_alert(dev, rule, start, due, None, None, False, now)
            dev.offline_alert = a.id
            dev.sync_down()
            events.append(AlertEvent(EventKind.RAISED, a))

    def _evict(self, now: datetime) -> None:
        keep = timedelta(seconds=self.settings.keep_resolved_s)
        q = self._resolved_queue
        while q and q[0][0] + keep <= now:
            _, i = q.popleft()
            a = self._alerts.get(i)
            if a is None or a.is_open:
                continue
            del self._alerts[i]
            ids = self._by_rule.get((a.device_id, a.rule_id))
            if ids is not None:
                ids.remove(i)
                if not ids:
                    del self._by_rule[(a.device_id, a.rule_id)]

    # -- late data ----------------------------------------------------------------------------

    def _lookback(self, dev: _Device) -> timedelta:
        """How far before the first late reading the replay needs context: long enough to
        see a delay or clear already running there, or a budget's window."""
        s = 0.0
        for m in dev.machines:
            r = m.rule
            if isinstance(r, LimitRule):
                s = max(s, r.delay_s + r.clear_for_s)
            elif isinstance(r, BatteryLowRule):
                s = max(s, r.for_s)
            elif isinstance(r, DoorOpenRule):
                s = max(s, r.open_for_s)
            elif isinstance(r, BudgetRule) and r.window_s is not None:
                s = max(s, r.window_s)
        return timedelta(seconds=s)

    def _late_pass(
        self,
        dev: _Device,
        late: list[Reading],
        known: list[Reading],
        received_at: datetime,
        history: History | None,
        events: list[AlertEvent],
    ) -> None:
        if not dev.machines or dev.last is None or dev.rules_from is None:
            return
        rules_from = dev.rules_from
        late = [r for r in late if r[1] >= rules_from]
        if not late:
            return  # all inside the ignore period
        newest = dev.last
        by_ts: dict[datetime, Reading] = {}
        if history is not None:
            # Stored readings win over a redelivered copy, like the store's first-wins.
            for r in history(dev.id, late[0][1] - self._lookback(dev), newest[1]):
                if r[0] == dev.id:
                    by_ts.setdefault(r[1], r)
        for r in known:
            by_ts.setdefault(r[1], r)
        for r in late:
            by_ts.setdefault(r[1], r)
        by_ts.setdefault(newest[1], newest)
        timeline = sorted((r for r in by_ts.values() if r[1] >= rules_from), key=_TS)
        late_ts = [r[1] for r in late]
        ends_at_newest = timeline[-1][1] == newest[1]
        for m in dev.machines:
            if isinstance(m, DurationMachine):
                self._replay_duration(dev, m, timeline, late_ts, ends_at_newest, received_at, events)
            else:
                self._replay_budget(dev, m, timeline, late_ts, received_at, events)
            if m.busy:
                self._watch[dev.id] = None

    def _replay_duration(
        self,
        dev: _Device,
        m: DurationMachine,
        timeline: list[Reading],
        late_ts: list[datetime],
        ends_at_newest: bool,
        received_at: datetime,
        events: list[AlertEvent],
    ) -> None:
        rm = DurationMachine.for_rule(m.rule)
        found: list[_Excursion] = []
        cur: _Excursion | None = None
        idx = rm.idx
        for r in timeline:
            v = r[idx]
            if v is None:
                continue
            ts = r[1]
            # One call at a time: a transition's moments must be read before the next call.
            if rm.busy:
                cur = _record(rm, rm.advance(ts), found, cur)
            cur = _record(rm, rm.feed(ts, v), found, cur)
        rule_id = m.rule.id
        for ex in found:
            end = ex.cleared_at
            if not any(ex.start <= t and (end is None or t <= end) for t in late_ts):
                continue  # visible without the late data: the live pass has judged it
            known = self._overlapping(dev.id, rule_id, ex.start, end)
            if known is not None:
                if (
                    known.is_open
                    and ex.peak is not None
                    and ex.peak_at is not None
                    and m.worse is not None
                    and (known.peak is None or m.worse(ex.peak, known.peak))
                ):
                    a = with_peak(known, ex.peak, ex.peak_at, received_at)
                    self._alerts[a.id] = a
                    events.append(AlertEvent(EventKind.UPDATED, a))
                    if m.alert_id == a.id:
                        m.peak, m.peak_at = ex.peak, ex.peak_at
                continue
            a = self._new_alert(dev, m.rule, ex.start, ex.raised_at, ex.peak, ex.peak_at, True, received_at)
            events.append(AlertEvent(EventKind.RAISED, a))
            if end is not None:
                self._close(a.id, _clear_text(m.rule), received_at, end, events)
            else:
                # Still running at the newest reading: the live machine carries it on.
                m.adopt_alert(a.id, ex.peak, ex.peak_at)
                if rm.active and rm.clear_since is not None and rm.clear_since >= ex.raised_at:
                    m.clear_since = rm.clear_since
        # A condition pending at the newest reading may have begun in the late data.
        if (
            ends_at_newest
            and not m.active
            and not m.rearm
            and m.pending_since is not None
            and rm.pending_since is not None
            and rm.pending_since < m.pending_since
        ):
            m.pending_since = rm.pending_since
            if m.worse is not None and rm.peak is not None and (m.peak is None or m.worse(rm.peak, m.peak)):
                m.peak, m.peak_at = rm.peak, rm.peak_at

    def _replay_budget(
        self,
        dev: _Device,
        m: BudgetMachine,
        timeline: list[Reading],
        late_ts: list[datetime],
        received_at: datetime,
        events: list[AlertEvent],
    ) -> None:
        spans: list[tuple[datetime, datetime]] = []
        open_since: datetime | None = None
        idx, trips, trip = m.idx, m.trips, m.trip
        peak: float | None = None
        peak_at: datetime | None = None
        for r in timeline:
            v: Any = r[idx]  # a number for the fields budgets watch (temp_c, rh)
            if v is None:
                continue
            ts = r[1]
            if trips(v, trip):
                if open_since is None:
                    open_since = ts
                if peak is None or m.worse(v, peak):
                    peak, peak_at = v, ts
            elif open_since is not None:
                spans.append((open_since, ts))
                open_since = None
        lo, hi = timeline[0][1], timeline[-1][1]
        m.splice(lo, hi, spans, open_since)
        if m.last_t is None or m.last_t < hi:
            m.last_t = hi
        since = late_ts[0]
        while m.armed and not m.active:
            c = m.first_crossing(since, hi)
            if c is None:
                break
            a = self._new_alert(dev, m.rule, m.exposure_start(c), c, peak, peak_at, True, received_at)
            events.append(AlertEvent(EventKind.RAISED, a))
            m.adopt_alert(a.id, peak, peak_at)
            below = m.first_below(c, hi)
            if below is None:
                break
            self._close(a.id, _clear_text(m.rule), received_at, below, events)
            m.clear_at(below)
            since = below

    def _overlapping(
        self, device_id: str, rule_id: str, start: datetime, end: datetime | None
    ) -> Alert | None:
        for i in self._by_rule.get((device_id, rule_id), ()):
            a = self._alerts[i]
            if (end is None or a.start <= end) and (a.cleared_at is None or start <= a.cleared_at):
                return a
        return None


__all__ = ["AlertEngine", "History", "LifecycleError", "UnknownAlert"]
