"""What a kernel materializer is: options it accepts, the (C, L) it will produce, the kernel."""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.view import LayerView

OptionSpec = dict[str, tuple[tuple[type, ...], Any]]  # name -> (accepted types, default)


class Materializer:
    """Computes a layer's long-conv kernel exactly as the upstream model does.

    Subclasses set ``name`` and ``options`` and implement :meth:`shape` (from tensor headers
    only, for dry runs) and :meth:`kernel` (float64, shape (C, L)).
    """

    name: ClassVar[str]
    options: ClassVar[OptionSpec] = {}

    def check_options(self, given: dict[str, Any]) -> list[str]:
        problems = []
        for key, value in given.items():
            if key not in self.options:
                problems.append(f"materializer '{self.name}' has no option '{key}' "
                                f"(options: {', '.join(self.options) or 'none'})")
                continue
            types = self.options[key][0]
            ok = isinstance(value, types) and not (isinstance(value, bool) and bool not in types)
            if not ok:
                names = "/".join("null" if t is type(None) else t.__name__ for t in types)
                problems.append(f"option '{key}' must be {names}, got {value!r}")
        return problems

    def resolve_options(self, given: dict[str, Any]) -> dict[str, Any]:
        return {k: given.get(k, default) for k, (_, default) in self.options.items()}

    def shape(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        """(C, L) of the kernel, from shapes alone; raises LcdError on mis-shaped parameters."""
        raise NotImplementedError

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        """The (C, L) float64 kernel (for a non-causal layer: its causal half h[0 .. L-1])."""
        raise NotImplementedError

    def kernel_channels(self, view: LayerView, options: dict[str, Any], idx: Tensor) -> Tensor:
        """The kernel of the channels ``idx`` only, (len(idx), L) float64, equal to
        ``kernel(...)[idx]`` (what `lcd inspect` samples). The default computes every channel;
        a materializer whose cost grows with C may compute fewer."""
        return self.kernel(view, options)[idx]

    def info(self, view: LayerView, options: dict[str, Any]) -> dict[str, Any]:
        """Facts about the source generator worth showing (e.g. an SSM's state size and the
        conditioning of its eigenvectors); shown by ``lcd inspect``. Empty by default."""
        return {}

    def warnings(self, view: LayerView, options: dict[str, Any]) -> list[str]:
        """What the user should know about this layer before trusting the fit (e.g. that the
        engine runs the generator at a lower precision than the one materialized, and by how
        much); shown by ``lcd distill`` and recorded in its report. Empty by default."""
        return []

    def modes(self, view: LayerView, options: dict[str, Any]) -> tuple[Tensor, Tensor] | None:
        """For a layer that already is a diagonal SSM: poles and residues (C, M) complex128
        with kernel[c, t] = Re sum_m R[c, m] p[c, m]^t exactly (the fitter's extra start for
        order reduction). None when the source is not diagonal (the default)."""
        return None

    def kernel_rev(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        """Anti-causal half of a non-causal layer, k_rev[j] = h[-(j+1)], (C, L) float64.

        Only materializers of two-sided (``causal: false``) families implement it.
        """
        raise LcdError(f"materializer '{self.name}' has no anti-causal (reverse) kernel",
                       file=view.file, key=view.prefix,
                       hint="this family is causal: remove 'causal: false' from the config")

    def evidence(self, view: LayerView, options: dict[str, Any]) -> dict[str, tuple[Any, str]]:
        """Options the tensors themselves decide, as {name: (value, reason)} (e.g. a TNN gamma
        that is one constant in (0, 1) is the fixed-decay buffer). Used only for options that
        neither the command line nor the model's config set; may read small tensors.
        None by default."""
        return {}

    def check_structure(self, view: LayerView, options: dict[str, Any]) -> list[str]:
        """Problems with the layer's parameters against the structure upstream builds (e.g. an
        MLP's linear layers must be contiguous), from key names and shapes; [] by default."""
        return []

    def accepts(self, view: LayerView, options: dict[str, Any]) -> bool:
        """Whether a layer found by key names is one of this config's (shape checks that
        relate several tensors, e.g. a two-sided kernel holding twice the channels of D)."""
        return True


def resolve_length(view: LayerView, natural: int | None, options: dict[str, Any]) -> int:
    """Kernel length: options['length'] (truncates) else the checkpoint's natural length."""
    want = options.get("length")
    if want is None:
        if natural is None:
            raise LcdError("the kernel length is not stored in the checkpoint",
                           file=view.file, key=view.prefix,
                           hint="set it with --length or the config option 'length'")
        return natural
    if want < 1 or (natural is not None and want > natural):
        raise LcdError(f"kernel length {want} is out of range 1..{natural or 'inf'}",
                       file=view.file, key=view.prefix, hint="choose a smaller --length")
    return int(want)
