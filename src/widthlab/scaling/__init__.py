"""Scaling analysis: power-law fits (fit.py), estimates and intervals (inference.py), the compare report."""
from widthlab.scaling.fit import (Curve, ScalingFit, effective_width, fit_curve, fit_loglog, fit_scaling,
                                  profile_ci)
from widthlab.scaling.inference import Bootstrap, Design, bootstrap, estimates

__all__ = ["Bootstrap", "Curve", "Design", "ScalingFit", "bootstrap", "effective_width", "estimates", "fit_curve",
           "fit_loglog", "fit_scaling", "profile_ci"]
