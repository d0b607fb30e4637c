"""The vortex layout against the real vortex engine (PyPI vtx 1.1.0, Evo 2 / StripedHyena 2).

A small random Evo 2-style model (blocks SE MR LI SE MR LI, no attention, width 48, 16 real
LI modes, float32, CPU) is built with the engine's own code from a config derived from its
shipped ``configs/evo2-7b-8k.yml`` and saved as a model folder (safetensors + config.yml);
`lcd distill --layout vortex --family evo2-li` rewrites its LI filters; the engine loads the
result with its own model class, config and ``custom_load_state_dict``, and its logits are
compared with the original's in the parallel path and in prefill + steps.

vtx 1.1.0 does not import on a CPU-only machine as shipped; the ``engine`` fixture stubs
exactly three things, each a CUDA-only dependency that no code path of this model calls:
  1. ``flash_attn_2_cuda``: ``vortex/ops/__init__.py`` imports the flash-attention extension
     (via ``ops/attn_interface.py``) at import time; an empty module stands in (attention
     blocks, the only users, are absent and ``use_flash_attn`` is False);
  2. ``vortex.ops.embedding.rotary``: ``model/rotary.py`` imports ``apply_rotary``, a Triton
     kernel; a stub that raises if called stands in (rotary embeddings belong to attention);
  3. ``torch.cuda.device``: the model enters ``torch.cuda.device(device)`` with ``device =
     "cpu"`` while building blocks and projecting inputs, which torch refuses without CUDA; the
     stub is a no-op context for non-CUDA devices and the original otherwise.
Everything else is the engine's own torch code (``use_flash_attn: False``,
``use_fp8_input_projections: False``, no fused HC* kernels).
"""

from __future__ import annotations

import importlib
import json
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from lcd_cli.errors import LcdError
from lcd_cli.layouts.vortex import INERT_LOG_POLE
from tests.conftest import lcd

ENGINE = ["vtx==1.1.0", "einops==0.8.1", "tqdm"]
CHANNELS, MODES, VOCAB, GROUPS = 48, 16, 40, 12
FIT_LENGTH, SEQ = 256, 93  # kernel length fitted (= max_seqlen, the length `lcd verify
# --engine` runs); tokens per sequence in the direct comparisons (awkward, < FIT_LENGTH)
PARITY = 1e-5  # logits rel err bar at the source's own order, and recurrent vs parallel
LI_BLOCKS = (2, 5)


class _CpuDevice:
    """torch.cuda.device for a non-CUDA device: a no-op context (stub 3 of the docstring)."""

    def __init__(self, device: Any, original: Any) -> None:
        self._inner = None if _is_cpu(device) else original(device)

    def __enter__(self) -> Any:
        return self._inner.__enter__() if self._inner is not None else self

    def __exit__(self, *exc: Any) -> Any:
        return self._inner.__exit__(*exc) if self._inner is not None else False


def _is_cpu(device: Any) -> bool:
    return str(device).startswith("cpu")


@pytest.fixture(scope="session")
def engine() -> Any:
    """The engine's model module (pip --no-deps into this interpreter once), with the three
    CPU stubs of the module docstring in place for the session."""
    patch = pytest.MonkeyPatch()
    original = torch.cuda.device
    patch.setattr(torch.cuda, "device", lambda d: _CpuDevice(d, original))
    if "flash_attn_2_cuda" not in sys.modules:
        patch.setitem(sys.modules, "flash_attn_2_cuda", types.ModuleType("flash_attn_2_cuda"))
    rotary = types.ModuleType("vortex.ops.embedding.rotary")

    def apply_rotary(*args: Any, **kwargs: Any) -> Any:
        raise NotImplementedError("rotary embeddings need vortex's Triton kernel (stubbed)")

    rotary.apply_rotary = apply_rotary  # type: ignore[attr-defined]
    patch.setitem(sys.modules, "vortex.ops.embedding.rotary", rotary)
    try:
        module = importlib.import_module("vortex.model.model")
    except ImportError:
        done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                               *ENGINE], capture_output=True, text=True)
        importlib.invalidate_caches()
        try:
            module = importlib.import_module("vortex.model.model")
        except ImportError as e:
            patch.undo()
            pytest.skip(f"the vortex engine cannot be installed ({e}; pip said: "
                        f"{done.stderr.strip()[-300:]})")
    yield module
    patch.undo()


def engine_config(state_size: int = MODES) -> dict[str, Any]:
    """evo2-7b-8k.yml (vortex's shipped config) shrunk: 6 blocks SE MR LI SE MR LI, no
    attention, width 48, 12 filter groups for MR / SE, a small vocabulary, no fused kernels."""
    return {"model_name": "lcd-test-evo2-tiny", "vocab_size": VOCAB, "hidden_size": CHANNELS,
            "num_filters": CHANNELS, "hcl_layer_idxs": list(LI_BLOCKS),
            "hcm_layer_idxs": [1, 4], "hcs_layer_idxs": [0, 3], "attn_layer_idxs": [],
            "hcm_filter_length": 128, "hcl_filter_groups": CHANNELS, "hcm_filter_groups": GROUPS,
            "hcs_filter_groups": GROUPS, "hcs_filter_length": 7, "num_layers": 6,
            "short_filter_length": 3, "num_attention_heads": 4, "short_filter_bias": False,
            "eps": 1e-6, "state_size": state_size, "make_vocab_size_divisible_by": 8,
            "inner_size_multiple_of": 16, "inner_mlp_size": 64, "proj_groups": 1,
            "hyena_filter_groups": 1, "column_split_hyena": False, "column_split": True,
            "evo2_style_activations": True, "model_parallel_size": 1, "pipe_parallel_size": 1,
            "tie_embeddings": True, "mha_out_proj_bias": True, "hyena_out_proj_bias": True,
            "hyena_flip_x1x2": False, "qkv_proj_bias": False, "use_fp8_input_projections": False,
            "max_seqlen": 256, "max_batch_size": 2, "final_norm": True, "use_flash_attn": False,
            "use_flash_rmsnorm": False, "use_flash_depthwise": False, "use_flashfft": False,
            "inference_mode": True, "prefill_style": "fft", "mlp_activation": "gelu",
            "print_activations": False}


def build(engine: Any, config: dict[str, Any]) -> Any:
    """The engine's StripedHyena for a config, float32 everywhere."""
    from vortex.model.utils import dotdict

    dtypes = {k: torch.float32 for k in ("params_dtype", "hyena_block_dtype", "mlp_dtype",
                                         "attn_block_dtype")}
    return engine.StripedHyena(dotdict(config | dtypes)).float().eval()


def load(engine: Any, folder: Path) -> Any:
    """The engine's own loading: the folder's config.yml, its model class, its
    custom_load_state_dict (strict)."""
    config = yaml.safe_load((folder / "config.yml").read_text())
    config.pop("lcd", None)
    model = build(engine, config)
    model.custom_load_state_dict(load_file(folder / "model.safetensors"), strict=True)
    return model.float().eval()


@pytest.fixture(scope="session")
def models(engine: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The source folder and its distillations at the source's order and at half of it."""
    root = tmp_path_factory.mktemp("vortex")
    torch.manual_seed(0)
    config = engine_config()
    model = build(engine, config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for i in LI_BLOCKS:  # Evo 2's decaying modes: log_poles = -exp(p) exp(gamma) < 0
            f = model.blocks[i].filter
            f.log_poles.copy_(-torch.exp(torch.empty(CHANNELS, MODES, 1).uniform_(-5.5, 0.0,
                                                                                 generator=g)))
            f.residues.copy_(0.3 * torch.randn(CHANNELS, MODES, generator=g))
            f.D.copy_(torch.randn(CHANNELS, generator=g))
        for i in (1, 4):  # MR taps, decayed as stored
            taps = model.blocks[i].filter.h
            taps.copy_(torch.randn(taps.shape, generator=g) * 0.9 ** torch.arange(128.0) * 0.1)
    source = root / "evo2-tiny"
    source.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()},
              source / "model.safetensors", metadata={"format": "pt"})
    (source / "config.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    out = {"source": source}
    for name, order in (("full", MODES), ("half", MODES // 2)):
        res = lcd("distill", source, "--layout", "vortex", "--family", "evo2-li", "--order",
                  order, "--length", FIT_LENGTH, "-o", root / name, "--device", "cpu")
        assert res.exit_code == 0, res.output
        out[name] = root / name
    return out


def tokens(batch: int = 2, seed: int = 3) -> torch.Tensor:
    return torch.randint(1, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@torch.no_grad()
def recurrent(model: Any, toks: torch.Tensor, prompt: int) -> torch.Tensor:
    """Prefill on toks[:, :prompt] (the engine's FFT prefill), then one step per token."""
    from lcd_cli.engines.vortex import recurrent_logits

    return recurrent_logits(model, toks, prompt)


def test_written_tensors_config_and_metadata(models: dict[str, Path]) -> None:
    """Engine keys and dtypes, one state size (inert padding absent at K = N), the patched
    config.yml, every other tensor byte for byte."""
    src, full = models["source"] / "model.safetensors", models["full"] / "model.safetensors"
    with safe_open(str(src), framework="pt") as a, safe_open(str(full), framework="pt") as b:
        assert set(a.keys()) == set(b.keys())  # replaced under the same names
        meta = b.metadata()
        for key in a.keys():  # noqa: SIM118 (safe_open)
            ta, tb = a.get_tensor(key), b.get_tensor(key)
            if any(key == f"blocks.{i}.filter.{n}" for i in LI_BLOCKS
                   for n in ("log_poles", "residues")):
                assert tb.dtype == torch.float32 and tb.shape == ta.shape
            else:
                assert torch.equal(ta, tb) and ta.dtype == tb.dtype, key
    assert meta["lcd_layout"] == "vortex" and meta["lcd_state_size"] == str(MODES)
    config = yaml.safe_load((models["half"] / "config.yml").read_text())
    assert config["state_size"] == MODES // 2 and config["lcd"]["layout"] == "vortex"
    report = yaml.safe_load((models["half"] / "lcd.report.yaml").read_text())
    assert [row["poles"] for row in report["layers"]] == ["real", "real"]
    assert report["settings"]["poles"] == "real"
    with safe_open(str(models["half"] / "model.safetensors"), framework="pt") as f:
        lp = f.get_tensor("blocks.2.filter.log_poles")
    assert lp.shape == (CHANNELS, MODES // 2, 1) and bool((lp < 0).all())
    assert float(torch.tensor(INERT_LOG_POLE, dtype=torch.float32)) < 0


def test_source_order_matches_the_original(engine: Any, models: dict[str, Path]) -> None:
    """K = 16 (the source's order, fitted with real poles): the engine's logits of the
    distilled model match the original's to 1e-5, in parallel and in prefill + steps."""
    ref, dist = load(engine, models["source"]), load(engine, models["full"])
    toks = tokens()
    with torch.no_grad():
        z_ref, _ = ref(toks)
        z_par, _ = dist(toks)
    z_rec = recurrent(dist, toks, SEQ // 2)
    print(f"K={MODES}: parallel {rel(z_par, z_ref):.2e}, recurrent {rel(z_rec, z_ref):.2e}")
    assert rel(z_par, z_ref) <= PARITY
    assert rel(z_rec, z_ref) <= PARITY


def test_half_order_recurrent_matches_parallel(engine: Any, models: dict[str, Path]) -> None:
    """K = 8: the engine's recurrent path (FFT prefill, step_iir) agrees with its own parallel
    path to 1e-5; the logits error against the original is measured (it is the fit's)."""
    ref, dist = load(engine, models["source"]), load(engine, models["half"])
    toks = tokens(seed=4)
    with torch.no_grad():
        z_ref, _ = ref(toks)
        z_par, _ = dist(toks)
    z_rec = recurrent(dist, toks, 37)
    print(f"K={MODES // 2}: vs original {rel(z_par, z_ref):.2e}, recurrent vs parallel "
          f"{rel(z_rec, z_par):.2e}")
    assert rel(z_rec, z_par) <= PARITY
    assert rel(z_par, z_ref) < 0.5  # a distillation of this model, not another one


def test_engine_loader_keeps_the_filter_float32(engine: Any, models: dict[str, Path],
                                                tmp_path: Path) -> None:
    """vortex's load_checkpoint (torch pickle in, bfloat16 out) keeps parameters named
    *log_poles* / *residues* in float32: the distilled filter, under the engine's names, is
    one of them."""
    from vortex.model.utils import load_checkpoint

    path = tmp_path / "half.pt"
    torch.save(load_file(models["half"] / "model.safetensors"), path)
    config = yaml.safe_load((models["half"] / "config.yml").read_text())
    config.pop("lcd")
    model = build(engine, config)
    load_checkpoint(model, str(path))
    f = model.blocks[2].filter
    assert f.log_poles.dtype == torch.float32 and f.residues.dtype == torch.float32
    assert model.blocks[2].out_filter_dense.weight.dtype == torch.bfloat16
    stored = load_file(models["half"] / "model.safetensors")["blocks.2.filter.log_poles"]
    assert torch.equal(f.log_poles.detach(), stored)


def test_verify_engine_vortex(engine: Any, models: dict[str, Path], tmp_path: Path) -> None:
    """`lcd verify --engine vortex`: passes on the distilled folder; a copy with one layer's
    residues scaled fails (exit 1) at the same tolerance."""
    ok = lcd("verify", models["full"], "--reference", models["source"], "--engine", "vortex",
             "--engine-tol", PARITY, "--json")
    assert ok.exit_code == 0, ok.output
    doc = json.loads(ok.stdout)
    assert doc["engine"]["passed"] and doc["engine"]["engine"] == "vortex"
    assert doc["engine"]["worst"] <= PARITY and doc["engine"]["state_size"] == MODES
    assert doc["engine"]["parallel"]["top1"] == 1.0
    bad = tmp_path / "tampered"
    shutil.copytree(models["full"], bad)
    weights = load_file(bad / "model.safetensors")
    weights["blocks.5.filter.residues"] = weights["blocks.5.filter.residues"] * 1.01
    with safe_open(str(models["full"] / "model.safetensors"), framework="pt") as f:
        meta = f.metadata()
    save_file(weights, bad / "model.safetensors", metadata=meta)
    fail = lcd("verify", bad, "--reference", models["source"], "--engine", "vortex",
               "--engine-tol", PARITY, "--no-report", "--tol", "0.9")
    assert fail.exit_code == 1, fail.output
    assert "engine vortex" in fail.output and "FAIL" in fail.output


def test_client_errors(engine: Any, models: dict[str, Path], tmp_path: Path) -> None:
    """A folder without a config, and a config whose state_size disagrees with the weights."""
    from lcd_cli.engines.vortex import load_model

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(LcdError, match="no engine config"):
        load_model(empty)
    wrong = tmp_path / "wrong"
    shutil.copytree(models["half"], wrong)
    config = yaml.safe_load((wrong / "config.yml").read_text())
    (wrong / "config.yml").write_text(yaml.safe_dump(config | {"state_size": MODES}))
    with pytest.raises(LcdError, match="state_size"):
        load_model(wrong)
