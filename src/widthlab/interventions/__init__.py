"""Packing ideas: interventions against token-representation interference (see base.py for the protocol)."""
from widthlab.interventions.base import Intervention

__all__ = ["Intervention"]
