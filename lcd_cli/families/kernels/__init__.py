"""Kernel materializers, by name (the ``materializer`` field of a family config)."""

from lcd_cli.families.kernels.base import Materializer
from lcd_cli.families.kernels.explicit import ExplicitKernel
from lcd_cli.families.kernels.grouped_taps import GroupedTapsKernel
from lcd_cli.families.kernels.hyena import HyenaKernel
from lcd_cli.families.kernels.real_modal import RealModalKernel
from lcd_cli.families.kernels.ssm_params import H3Kernel, H3ShiftKernel, S4DKernel, S4Kernel
from lcd_cli.families.kernels.stripedhyena import ModalKernel
from lcd_cli.families.kernels.stu import STUKernel
from lcd_cli.families.kernels.tnn import TnnKernel

MATERIALIZERS: dict[str, Materializer] = {
    m.name: m for m in (ExplicitKernel(), HyenaKernel(), ModalKernel())
}
MATERIALIZERS |= {m.name: m for m in (RealModalKernel(), GroupedTapsKernel())}  # Evo 2

MATERIALIZERS[TnnKernel.name] = TnnKernel()  # TNN (causal and non-causal)
MATERIALIZERS |= {m.name: m for m in (S4DKernel(), S4Kernel(), H3Kernel(),
                                     H3ShiftKernel())}  # S4D / S4 / H3
MATERIALIZERS[STUKernel.name] = STUKernel()  # STU / Flash-STU (shared spectral basis)

__all__ = ["MATERIALIZERS", "Materializer"]
