"""The drop-in filter (lcd_cli.runtime.DistilledFilter) inside a HyenaDNA operator.

The operator is written here from the published formulas (hyena-dna standalone_hyenadna.py,
HyenaOperator of order 2: in_proj, causal depthwise short conv of 3 taps, x0 * fftconv(x1 * v,
k, bias), out_proj) over a small HyenaDNA "-hf" checkpoint; its original filter is the implicit
MLP (sin activations, exponential modulation with shift 0.05). The distilled filter replaces
``filter_fn``; outputs are compared original vs swapped, and recurrent decoding vs FFT.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from safetensors.torch import load_file

from lcd_cli.errors import LcdError
from lcd_cli.examples import make_example, write_example
from lcd_cli.numerics.modal import from_pairs
from lcd_cli.runtime import DistilledFilter
from tests.conftest import lcd, naive_modal, rel

D_MODEL, L_MAX, SHIFT = 4, 63, 0.05
MIXER = "hyena.backbone.layers.0.mixer"
PREFIX = f"{MIXER}.filter_fn"
EXACT = 1e-5  # float32 agreement of two evaluations of the same operator


def direct_fftconv(u: torch.Tensor, k: torch.Tensor, D: torch.Tensor) -> torch.Tensor:
    """Causal convolution by direct summation + D u: u (B, C, L), k (C, L), D (C,)."""
    y = torch.zeros_like(u, dtype=torch.float64)
    for tau in range(u.shape[-1]):
        y[..., tau:] += k[:, tau, None].double() * u[..., : u.shape[-1] - tau].double()
    return (y + D.double()[:, None] * u.double()).to(u.dtype)


class ImplicitFilter(nn.Module):
    """HyenaDNA's HyenaFilter from its stored tensors: h = W6 sin(f(W4 sin(f(W2 sin(f(W0 z +
    b0)) + b2)) + b4)), times exp(-t |deltas|) + shift."""

    def __init__(self, w: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.w = {k.removeprefix(PREFIX + "."): v.float() for k, v in w.items()
                  if k.startswith(PREFIX + ".")}
        self.bias = nn.Parameter(self.w["bias"])

    def filter(self, L: int) -> torch.Tensor:
        w = self.w
        z, t, f = w["pos_emb.z"][:, :L], w["pos_emb.t"][:, :L], w["implicit_filter.1.freq"]
        a = torch.sin(f * (z @ w["implicit_filter.0.weight"].T + w["implicit_filter.0.bias"]))
        a = torch.sin(f * (a @ w["implicit_filter.2.weight"].T + w["implicit_filter.2.bias"]))
        a = torch.sin(f * (a @ w["implicit_filter.4.weight"].T + w["implicit_filter.4.bias"]))
        h = a @ w["implicit_filter.6.weight"].T  # (1, L, C)
        return h * (torch.exp(-t * w["modulation.deltas"].abs()) + SHIFT)  # (1, L, C)

    def forward(self, x: torch.Tensor, L: int, k: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return direct_fftconv(x, k, bias)


class HyenaOperator(nn.Module):
    """Order-2 HyenaOperator over stored weights, with any filter_fn."""

    def __init__(self, w: dict[str, torch.Tensor], filter_fn: nn.Module) -> None:
        super().__init__()
        self.w = {k.removeprefix(MIXER + "."): v.float() for k, v in w.items()
                  if k.startswith(MIXER + ".") and ".filter_fn." not in k}
        self.filter_fn = filter_fn

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        """u (B, L, d) -> (B, L, d), the parallel (FFT) path."""
        w, L = self.w, u.shape[1]
        z = (u @ w["in_proj.weight"].T + w["in_proj.bias"]).transpose(1, 2)  # (B, 3d, L)
        uc = F.conv1d(z, w["short_filter.weight"], w["short_filter.bias"], padding=2,
                      groups=z.shape[1])[..., :L]  # (B, 3d, L) causal
        x0, x1, v = uc.split(D_MODEL, dim=1)
        k = self.filter_fn.filter(L)[0].T  # (d, L)
        v = self.filter_fn(v * x1, L, k=k, bias=self.filter_fn.bias)  # (B, d, L)
        return (v * x0).transpose(1, 2) @ w["out_proj.weight"].T + w["out_proj.bias"]

    def decode(self, u: torch.Tensor, prompt: int) -> torch.Tensor:
        """Prefill the long filter on u[:, :prompt], then one token at a time (short-conv FIR
        state of 2 inputs, filter_fn.step)."""
        w, L = self.w, u.shape[1]
        z = (u @ w["in_proj.weight"].T + w["in_proj.bias"]).transpose(1, 2)  # (B, 3d, L)
        taps, b = w["short_filter.weight"][:, 0], w["short_filter.bias"]  # (3d, 3), (3d,)
        zp = F.pad(z, (2, 0))  # (B, 3d, L + 2)
        uc = torch.stack([(zp[..., t : t + 3] * taps).sum(-1) for t in range(L)], -1)
        uc = uc + b[:, None]  # (B, 3d, L): the same causal short conv, tap by tap
        x0, x1, v = uc.split(D_MODEL, dim=1)
        y_pre, state = self.filter_fn.prefill((v * x1)[..., :prompt])  # (B, d, P)
        ys = [y_pre]
        for t in range(prompt, L):
            y_t, state = self.filter_fn.step((v * x1)[..., t], state)  # (B, d)
            ys.append(y_t[..., None])
        y = torch.cat(ys, dim=-1)  # (B, d, L)
        return (y * x0).transpose(1, 2) @ w["out_proj.weight"].T + w["out_proj.bias"]


@pytest.fixture(scope="module")
def distilled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("hd")
    src = write_example(make_example("hyenadna", seed=3, d_model=D_MODEL, n_layers=1,
                                     l_max=L_MAX), root / "hd.safetensors", shards=1)[0]
    out = root / "hd.lcd.safetensors"
    res = lcd("distill", src, "--order", 12, "--device", "cpu", "-o", out)
    assert res.exit_code == 0, res.output
    report = yaml.safe_load((root / "hd.lcd.report.yaml").read_text())
    return {"src": src, "out": out, "report": report, "weights": load_file(src)}


U = torch.randn(2, L_MAX, D_MODEL, generator=torch.Generator().manual_seed(7))


def test_filter_has_hyena_shapes_and_the_distilled_kernel(distilled: dict) -> None:
    filt = DistilledFilter.from_checkpoint(distilled["out"], PREFIX)
    with torch.no_grad():
        from safetensors import safe_open

        with safe_open(distilled["out"], framework="pt") as f:
            p = from_pairs(f.get_tensor(f"{PREFIX}.ssm.poles")).numpy()
            r = from_pairs(f.get_tensor(f"{PREFIX}.ssm.residues")).numpy()
        k = filt.filter(L_MAX)
        assert k.shape == (1, L_MAX, D_MODEL) and k.dtype == torch.float32
        assert rel(k[0].T, naive_modal(p, r, L_MAX)) <= EXACT
        assert torch.equal(filt.bias.data, distilled["weights"][f"{PREFIX}.bias"].float())
        x = torch.randn(2, D_MODEL, L_MAX)
        assert rel(filt(x, L_MAX), direct_fftconv(x, k[0].T, filt.bias)) <= EXACT


def test_swapped_operator_matches_the_original(distilled: dict) -> None:
    w = distilled["weights"]
    original = HyenaOperator(w, ImplicitFilter(w))
    swapped = HyenaOperator(w, DistilledFilter.from_checkpoint(distilled["out"], PREFIX))
    with torch.no_grad():
        y0, y1 = original(U), swapped(U)
    kernel_err = distilled["report"]["layers"][0]["rel_l2"]["max"]
    err = rel(y1, y0)
    print(f"HyenaDNA operator, order 12: kernel rel_l2 max {kernel_err:.2e}, output rel {err:.2e}")
    assert torch.isfinite(y1).all()
    assert err <= 2 * kernel_err  # the operator's error is the filter's, not the module's


def test_recurrent_decoding_matches_the_fft_path(distilled: dict) -> None:
    w = distilled["weights"]
    op = HyenaOperator(w, DistilledFilter.from_checkpoint(distilled["out"], PREFIX))
    with torch.no_grad():
        assert rel(op.decode(U, 20), op(U)) <= EXACT
        assert rel(op.decode(U, 1), op(U)) <= EXACT


def test_a_missing_layer_names_its_key(distilled: dict) -> None:
    with pytest.raises(LcdError, match=r"ssm\.poles"):
        DistilledFilter.from_checkpoint(distilled["out"], "hyena.backbone.layers.9.mixer.filter_fn")


def test_distilled_filter_without_bias_uses_zeros(tmp_path: Path) -> None:
    from lcd_cli.numerics.ssm import DiagonalSSM

    ssm = DiagonalSSM(torch.tensor([[0.5 + 0.1j]]), torch.tensor([[1.0 + 0j]]))
    filt = DistilledFilter(ssm)
    assert torch.equal(filt.bias.data, torch.zeros(1))
    y, _ = filt.prefill(torch.ones(1, 1, 3))
    torch.testing.assert_close(y, direct_fftconv(torch.ones(1, 1, 3), filt.filter(3)[0].T,
                                                 torch.zeros(1)))
