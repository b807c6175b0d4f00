"""Typed settings of the alert engine; built by web.config, never read from files here."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields


@dataclass(frozen=True, slots=True)
class AlertSettings:
    # Devices without an assignment get this profile (None: no rules until assigned).
    default_profile: str | None = None
    # A reading received this long after its own timestamp is late data (a logger's
    # backfill after a dead zone); an alert it reveals is marked found_late. Equal to the
    # payload contract's max_future_s, so a device clock's allowed skew doesn't count.
    late_after_s: float = 300.0
    # tick() extrapolates a device's last value on the device's own clock (server time
    # minus the lag its last reading arrived with), minus this margin for readings still
    # in flight. A larger value trades alert latency for fewer decisions that later
    # readings contradict.
    tick_grace_s: float = 0.0
    # ...and at most this far past its last reading: beyond that the device counts as
    # silent (the offline rule's business) and its next readings decide.
    max_hold_s: float = 600.0
    # Resolved alerts stay in the engine this long (for late acknowledgements and for
    # recognising an excursion that a second late batch reveals again); the store keeps
    # them for good.
    keep_resolved_s: float = 7 * 86400.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name.endswith("_s") and not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"alert settings: {f.name} must be a number ≥ 0, got {v!r}")
