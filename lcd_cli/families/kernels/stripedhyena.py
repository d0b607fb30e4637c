"""StripedHyena / Evo-1 modal filters: already a diagonal SSM.

poles, residues: (C, N, 1, 2) [real, imag]; h[c, t] = Re sum_n R[c, n] p[c, n]^t, computed
upstream as exp(t * log p). The length is not stored: it is the input length (config/CLI).
"""

from __future__ import annotations

from typing import Any, ClassVar

from torch import Tensor

from lcd_cli.errors import LcdError
from lcd_cli.families.kernels.base import Materializer, OptionSpec, resolve_length
from lcd_cli.families.view import LayerView
from lcd_cli.numerics.modal import from_pairs, modal_kernel


class ModalKernel(Materializer):
    name = "modal"
    options: ClassVar[OptionSpec] = {
        "poles": ((str,), "poles"),
        "residues": ((str,), "residues"),
        "length": ((int, type(None)), None),
    }

    def _modes(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        shapes = {k: view.shape(options[k]) for k in ("poles", "residues")}
        for k, s in shapes.items():
            if len(s) < 2 or s[-1] != 2 or any(d != 1 for d in s[2:-1]):
                raise LcdError(f"expected shape (C, N, 1, 2) or (C, N, 2) of [real, imag] pairs, "
                               f"got {list(s)}", file=view.file, key=view.key(options[k]))
        if shapes["poles"] != shapes["residues"]:
            raise LcdError(f"residues {list(shapes['residues'])} do not match poles "
                           f"{list(shapes['poles'])}", file=view.file,
                           key=view.key(options["residues"]))
        return shapes["poles"][0], shapes["poles"][1]

    def shape(self, view: LayerView, options: dict[str, Any]) -> tuple[int, int]:
        channels, _ = self._modes(view, options)
        return channels, resolve_length(view, None, options)

    def modes(self, view: LayerView, options: dict[str, Any]) -> tuple[Tensor, Tensor]:
        channels, modes = self._modes(view, options)
        p = from_pairs(view.get(options["poles"]).reshape(channels, modes, 2))  # (C, N)
        r = from_pairs(view.get(options["residues"]).reshape(channels, modes, 2))  # (C, N)
        return p, r

    def kernel(self, view: LayerView, options: dict[str, Any]) -> Tensor:
        _, length = self.shape(view, options)
        return modal_kernel(*self.modes(view, options), length)  # (C, L)
