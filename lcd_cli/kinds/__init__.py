"""Layer kinds, asked in order: the first that claims a family config distills its layers."""

from lcd_cli.families.spec import FamilyConfig
from lcd_cli.kinds.base import (
    FitSettings,
    KindOutput,
    LayerKind,
    PlannedLayer,
    VerifyOptions,
)
from lcd_cli.kinds.causal import CausalKind
from lcd_cli.kinds.shared_basis import SharedBasisKind
from lcd_cli.kinds.two_sided import TwoSidedKind

# Most specific first: a shared-basis family is causal too.
KINDS: list[LayerKind] = [SharedBasisKind(), TwoSidedKind(), CausalKind()]


def kind_for(config: FamilyConfig) -> LayerKind:
    return next(kind for kind in KINDS if kind.claims(config))


__all__ = ["KINDS", "FitSettings", "KindOutput", "LayerKind", "PlannedLayer", "VerifyOptions",
           "kind_for"]
