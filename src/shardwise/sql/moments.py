"""Count, mean and M2 (the sum of squared deviations): a variance state that merges exactly.

Each shard folds its values in with Welford's update; the coordinator combines shard
states with Chan et al.'s pairwise formula. Both are the numerically stable forms: no
``sum(x*x) - sum(x)**2/n`` cancellation. PostgreSQL's definitions: ``variance`` and
``stddev`` are the sample statistics (``var_samp``, NULL below two values); ``var_pop``
and ``stddev_pop`` divide by n (NULL with no values).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

_STATE: Final = struct.Struct("<qdd")
STATE_BYTES: Final = _STATE.size

Statistic: TypeAlias = Literal["var_samp", "var_pop", "stddev_samp", "stddev_pop"]


@dataclass(frozen=True, slots=True)
class Moments:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0

    def add(self, x: float) -> Moments:
        count = self.count + 1
        delta = x - self.mean
        mean = self.mean + delta / count
        return Moments(count, mean, self.m2 + delta * (x - mean))

    def merge(self, other: Moments) -> Moments:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        count = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / count
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / count
        return Moments(count, mean, m2)

    def statistic(self, which: Statistic) -> float | None:
        sample = which.endswith("_samp")
        divisor = self.count - 1 if sample else self.count
        if divisor <= 0:
            return None
        variance = max(self.m2, 0.0) / divisor
        return math.sqrt(variance) if which.startswith("stddev") else variance

    def encode(self) -> bytes:
        return _STATE.pack(self.count, self.mean, self.m2)

    @classmethod
    def decode(cls, data: bytes) -> Moments:
        count, mean, m2 = _STATE.unpack(data)
        return cls(count, mean, m2)
