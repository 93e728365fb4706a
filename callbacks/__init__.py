"""Lightning callbacks of caloflow: TensorBoard sample monitoring and the non-finite-loss guard."""
from callbacks.nan_guard import NonFiniteGuard
from callbacks.samples import SampleMonitor

__all__ = ["NonFiniteGuard", "SampleMonitor"]
