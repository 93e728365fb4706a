"""Progress lines and stage timings shared by the runs of ``python -m refine.laser`` (toys and showers)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager


class Stages:
    """Mixin for a run object with ``progress: bool``, ``timings: dict[str, float]`` and a ``label``.

    ``say`` prints ``[label] message`` to stderr, also with ``progress`` off (that only turns off the
    progress bars: a long run without bars still says what it is doing); ``stage(name)`` times the
    enclosed step into ``timings[name]`` (seconds, wall clock) and says how long it took.
    """

    label: str

    def say(self, msg: str) -> None:
        print(f"[{self.label}] {msg}", file=sys.stderr, flush=True)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        yield
        self.timings[name] = time.perf_counter() - t0
        self.say(f"{name}: {self.timings[name]:.1f} s")


__all__ = ["Stages"]
