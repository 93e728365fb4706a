"""Lightning callbacks of caloflow: TensorBoard sample monitoring, the non-finite-loss guard and
histogram-based model selection, and exact resume (random states in checkpoints)."""

from callbacks.model_selection import HistogramSelection
from callbacks.nan_guard import NonFiniteGuard
from callbacks.resume import ExactResume
from callbacks.samples import SampleMonitor

__all__ = ["ExactResume", "HistogramSelection", "NonFiniteGuard", "SampleMonitor"]
