"""A small thermal model of a refrigerated space: what a simulated sensor reads.

The air temperature relaxes towards the cooling setpoint while the compressor works, and
towards the ambient temperature while a door is open or the compressor has failed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field


@dataclass(slots=True)
class ThermalSpace:
    setpoint_c: float
    ambient_c: float = 22.0
    temp_c: float = field(default=math.nan)
    # Time constants (s): how fast the air follows the cooling or the warm air from outside.
    # A working reefer unit pulls the air back down within minutes of a door closing.
    cooling_tau_s: float = 150.0
    warming_tau_s: float = 900.0
    door_tau_s: float = 240.0
    noise_c: float = 0.05
    door_open: bool = False
    compressor_ok: bool = True
    rng: random.Random = field(default_factory=random.Random)

    def __post_init__(self) -> None:
        if math.isnan(self.temp_c):
            self.temp_c = self.setpoint_c

    def step(self, dt_s: float) -> float:
        """Advance the model by dt_s seconds; return the sensor's reading."""
        if self.door_open:
            target, tau = self.ambient_c, self.door_tau_s
        elif self.compressor_ok:
            target, tau = self.setpoint_c, self.cooling_tau_s
        else:
            target, tau = self.ambient_c, self.warming_tau_s
        self.temp_c += (target - self.temp_c) * (1.0 - math.exp(-dt_s / tau))
        return round(self.temp_c + self.rng.gauss(0.0, self.noise_c), 2)
