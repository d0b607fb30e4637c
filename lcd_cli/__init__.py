"""lcd: distil long-convolution layers into diagonal state space models."""

__version__ = "0.1.0"
