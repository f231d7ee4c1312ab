"""Scaling analysis: fit L(m) = A·m^-α + E across arms, bootstrap it, and turn it into width multipliers."""
from widthlab.scaling.fit import (ScalingBootstrap, ScalingFit, bootstrap_scaling, effective_width, fit_loglog,
                                  fit_scaling, welch_t, width_multiplier)

__all__ = ["ScalingBootstrap", "ScalingFit", "bootstrap_scaling", "effective_width", "fit_loglog",
           "fit_scaling", "welch_t", "width_multiplier"]
