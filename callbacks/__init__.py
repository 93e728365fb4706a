"""Lightning callbacks of caloflow: TensorBoard sample monitoring, the non-finite-loss guard and
histogram-based model selection."""
from callbacks.model_selection import HistogramSelection
from callbacks.nan_guard import NonFiniteGuard
from callbacks.samples import SampleMonitor

__all__ = ["HistogramSelection", "NonFiniteGuard", "SampleMonitor"]
