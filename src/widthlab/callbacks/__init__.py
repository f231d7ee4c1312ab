"""Lightning callbacks: thin adapters that turn pure measurements into logged metrics."""
from widthlab.callbacks.overlap import OverlapMonitor

__all__ = ["OverlapMonitor"]
