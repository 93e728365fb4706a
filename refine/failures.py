"""A method of ``python -m refine.laser`` that cannot run on the weights it is given.

Rejection sampling whose acceptance is too low for its ``max_rounds``, HMC whose chains diverge or
end at non-finite showers, a refiner whose training loss is not finite: each is a property of the
weights (or of the settings for them), not a bug, and one such method must not take the others'
results with it. The method raises :class:`MethodFailed` with the reason and the measured figures;
the run reports it in the method's row and goes on.
"""

from __future__ import annotations


class MethodFailed(RuntimeError):
    """One method could not run: ``reason`` (one line) and the measured ``figures`` (name -> number)
    that show why, e.g. ``acceptance=0.0022``."""

    def __init__(self, reason: str, **figures: float | int):
        self.reason = reason
        self.figures = {k: v if isinstance(v, int) else float(v) for k, v in figures.items()}
        super().__init__(reason)

    def entry(self) -> dict:
        """What the report keeps: ``{"reason": ..., **figures}``."""
        return {"reason": self.reason, **self.figures}


__all__ = ["MethodFailed"]
