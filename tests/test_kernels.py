"""Materializers against independent naive implementations of the upstream formulas."""

from __future__ import annotations

import cmath
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from lcd_cli.examples import make_example
from lcd_cli.families.layers import materialize, select_configs
from lcd_cli.families.view import LayerView
from lcd_cli.io.checkpoint import open_checkpoint
from tests.conftest import SMALL, rel

F64_FLOOR = 1e-12  # relative error allowed between float64 implementations




def layers_of(path: Path, **kw: object) -> list:
    ckpt = open_checkpoint(path)
    return ckpt, [la for _, ls in select_configs(ckpt, **kw) for la in ls]


def naive_hyena(tensors: dict, f: str, length: int, shift: float, use_stored_z: bool
                ) -> np.ndarray:
    """Per-position loop: positional features, Sin MLP, exponential window (upstream math)."""
    w0 = tensors[f"{f}.implicit_filter.0.weight"].double().numpy()
    E = w0.shape[1]
    l_max = tensors[f"{f}.pos_emb.t"].shape[1]
    freq = tensors[f"{f}.implicit_filter.1.freq"].double().numpy()[0]
    deltas = tensors[f"{f}.modulation.deltas"].double().numpy().reshape(-1)
    linears = [(tensors[f"{f}.implicit_filter.{j}.weight"].double().numpy(),
                tensors[f"{f}.implicit_filter.{j}.bias"].double().numpy()) for j in (0, 2, 4)]
    last = tensors[f"{f}.implicit_filter.6.weight"].double().numpy()
    bands = (E - 1) // 2
    fs = [1e-4 + i * (bands - 1 - 1e-4) / (bands - 1) for i in range(bands)] if bands > 1 else [1e-4]
    out = np.zeros((last.shape[0], length))
    for t in range(length):
        if use_stored_z:
            z = tensors[f"{f}.pos_emb.z"].double().numpy()[0, t]
        else:
            w = 2 * math.pi * t / l_max
            z = np.array([t / (l_max - 1)] + [math.cos(fr * w) for fr in fs]
                         + [-math.sin(fr * w) for fr in fs])
        a = z
        for W, b in linears:
            a = np.sin(freq * (W @ a + b))
        h = last @ a
        t_norm = float(tensors[f"{f}.pos_emb.t"].double()[0, t, 0])
        out[:, t] = h * (np.exp(-t_norm * np.abs(deltas)) + shift)
    return out


@pytest.mark.parametrize("stored_z", [True, False], ids=["stored-z", "recomputed-z"])
def test_hyena_matches_naive(write_ckpt, stored_z: bool) -> None:
    tensors = make_example("hyenadna", seed=3, dtype="fp64", **SMALL["hyenadna"])
    f = "hyena.backbone.layers.1.mixer.filter_fn"
    if not stored_z:
        tensors = {k: v for k, v in tensors.items() if not k.endswith("pos_emb.z")}
    ckpt, layers = layers_of(write_ckpt(tensors))
    assert [la.prefix for la in layers] == [f.replace(".1.", ".0."), f]
    h, D = materialize(ckpt, layers[1])
    want = naive_hyena(tensors, f, SMALL["hyenadna"]["l_max"], 0.05, stored_z)
    assert h.shape == want.shape
    assert rel(h, want) < F64_FLOOR
    assert torch.equal(D, tensors[f"{f}.bias"])


@pytest.mark.parametrize("rows", [1, 7, 1 << 30], ids=["rows1", "rows7", "one-block"])
def test_hyena_time_blocks_match_naive(write_ckpt, monkeypatch, rows: int) -> None:
    """The filter MLP runs in blocks of time rows (bounded temporaries at L = 1M); any block
    size, the last one partial, gives the naive per-position kernel, for all channels and for
    sampled ones (`kernel_channels`)."""
    import lcd_cli.families.kernels.hyena as hyena_mod

    tensors = make_example("hyenadna", seed=3, dtype="fp64", **SMALL["hyenadna"])
    f = "hyena.backbone.layers.1.mixer.filter_fn"
    ckpt, layers = layers_of(write_ckpt(tensors))
    widest = max(v.shape[0] for k, v in tensors.items()
                 if k.startswith(f"{f}.implicit_filter.") and k.endswith(".weight"))
    monkeypatch.setattr(hyena_mod, "_ROW_BUDGET", rows * widest)  # `rows` time rows per block
    h, _ = materialize(ckpt, layers[1])
    want = naive_hyena(tensors, f, SMALL["hyenadna"]["l_max"], 0.05, True)
    assert rel(h, want) < F64_FLOOR
    view = LayerView(ckpt, layers[1])
    idx = torch.tensor([0, 3])
    part = hyena_mod.HyenaKernel().kernel_channels(view, layers[1].config.options, idx)
    assert rel(part, want[idx.numpy()]) < F64_FLOOR


def test_hyena_shared_freq_and_length(write_ckpt) -> None:
    """Only the first Sin freq stored: it is reused; --length takes the first L rows."""
    tensors = make_example("hyenadna", seed=1, dtype="fp64", **SMALL["hyenadna"])
    f = "hyena.backbone.layers.0.mixer.filter_fn"
    assert f"{f}.implicit_filter.3.freq" not in tensors  # example stores only the first
    ckpt, layers = layers_of(write_ckpt(tensors), options={"length": 63})
    h, _ = materialize(ckpt, layers[0])
    want = naive_hyena(tensors, f, 63, 0.05, True)
    assert h.shape == (SMALL["hyenadna"]["d_model"], 63)
    assert rel(h, want) < F64_FLOOR


def test_hyena_safari_shift_zero(write_ckpt) -> None:
    tensors = make_example("hyenadna", seed=2, dtype="fp64", **SMALL["hyenadna"])
    tensors = {k.removeprefix("hyena."): v for k, v in tensors.items()}  # safari layout
    # The same keys as the HyenaDNA standalone layout, and safari's modulate is not stored.
    ckpt, layers = layers_of(write_ckpt(tensors), family="hyena-safari", sets=["modulate=true"])
    assert layers[0].config.name == "hyena-safari"
    h, _ = materialize(ckpt, layers[0])
    want = naive_hyena(tensors, "backbone.layers.0.mixer.filter_fn", 203, 0.0, True)
    assert rel(h, want) < F64_FLOOR


def test_modal_matches_naive(write_ckpt) -> None:
    tensors = make_example("stripedhyena", seed=4, dtype="fp64", **SMALL["stripedhyena"])
    ckpt, layers = layers_of(write_ckpt(tensors), options={"length": 100})
    assert [la.prefix for la in layers] == ["backbone.blocks.0.filter", "backbone.blocks.2.filter"]
    h, D = materialize(ckpt, layers[1])
    p = tensors["backbone.blocks.2.filter.poles"].double().numpy()[:, :, 0]
    r = tensors["backbone.blocks.2.filter.residues"].double().numpy()[:, :, 0]
    want = np.zeros((p.shape[0], 100))
    for c in range(p.shape[0]):
        for n in range(p.shape[1]):
            pc, rc = complex(*p[c, n]), complex(*r[c, n])
            for t in range(100):
                want[c, t] += (rc * cmath.exp(t * cmath.log(pc))).real
    assert rel(h, want) < F64_FLOOR
    assert torch.equal(D, tensors["backbone.blocks.2.filter.D"])


@pytest.mark.parametrize("smooth", [None, 7], ids=["raw", "smooth7"])
@pytest.mark.parametrize("lam", [0.0, 0.01], ids=["nosquash", "squash"])
def test_explicit_matches_naive(write_ckpt, tmp_path: Path, smooth: int | None, lam: float
                                ) -> None:
    tensors = make_example("long-conv", seed=5, dtype="fp64", **SMALL["long-conv"])
    ckpt, layers = layers_of(write_ckpt(tensors), family="safari-long-conv",
                             sets={"smooth_window": smooth, "squash_lambda": lam})
    h, D = materialize(ckpt, layers[1])
    k = tensors["backbone.layers.1.mixer.kernel.kernel"].numpy()
    ch, H, L = k.shape
    want = np.zeros((ch * H, L))
    for a in range(ch):
        for b in range(H):
            row = k[a, b].copy()
            if smooth:
                half = smooth // 2
                row = np.array([sum(row[s] for s in range(t - half, t + half + 1) if 0 <= s < L)
                                / smooth for t in range(L)])
            row = np.array([math.copysign(max(abs(x) - lam, 0.0), x) if x != 0 else 0.0
                            for x in row])
            want[a * H + b] = row
    assert rel(h, want) < F64_FLOOR
    assert torch.equal(D, tensors["backbone.layers.1.mixer.D"].reshape(-1))


def test_bf16_input_is_read(write_ckpt) -> None:
    path = write_ckpt("hyenadna", dtype="bf16")
    ckpt, layers = layers_of(path)
    h, _ = materialize(ckpt, layers[0])
    assert h.dtype == torch.float64 and torch.isfinite(h).all()
    assert ckpt.info(layers[0].generator_keys[0]).dtype == "BF16"


@pytest.mark.parametrize("name", ["hyenadna", "stripedhyena", "evo2", "s4d", "h3"])
def test_sampled_channels_materialize_as_the_full_kernel_does(write_ckpt, name: str) -> None:
    """materialize(..., channels) (what `lcd inspect` samples) equals the full kernel's rows,
    for the materializers that compute fewer channels (hyena) and the default (the rest)."""
    path = write_ckpt(make_example(name))
    with open_checkpoint(path) as ckpt:
        for cfg, layers in select_configs(ckpt):
            for layer in layers[:1]:
                h, D = materialize(ckpt, layer)  # (C, L)
                idx = torch.tensor(sorted({h.shape[0] - 1, 0, h.shape[0] // 3}))
                sub, D_sub = materialize(ckpt, layer, idx)  # (S, L)
                assert sub.shape == (len(idx), h.shape[1]), cfg.name
                assert torch.allclose(sub, h[idx], rtol=1e-12, atol=1e-14 * float(h.abs().max()))
                assert (D is None) == (D_sub is None)
                assert D is None or torch.equal(D_sub, D[idx])
