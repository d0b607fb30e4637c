"""Kernel materializers, by name (the ``materializer`` field of a family config)."""

from lcd_cli.kernels.base import Materializer
from lcd_cli.kernels.explicit import ExplicitKernel
from lcd_cli.kernels.hyena import HyenaKernel
from lcd_cli.kernels.stripedhyena import ModalKernel

MATERIALIZERS: dict[str, Materializer] = {
    m.name: m for m in (ExplicitKernel(), HyenaKernel(), ModalKernel())
}

__all__ = ["MATERIALIZERS", "Materializer"]
