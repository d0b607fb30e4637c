"""The StripedHyena engine (PyPI ``stripedhyena`` 0.2.2) as a client: model-level comparison.

Layer 5. Dimensions: B batch, T sequence length, V vocabulary, P prompt length (T // 2).

A model folder holds the engine's config (``config.json``, or the engine's own ``config.yml``)
and its weights (``*.safetensors``, or a ``model.safetensors.index.json``) in the engine's key
names (``blocks.{i}.filter.poles`` ...; a ``backbone.`` prefix is dropped). The distilled folder
is what ``lcd distill --layout stripedhyena`` writes, with ``state_size = K`` in its config.

:func:`compare_logits` runs both models on seeded random token batches and measures
  parallel    the distilled model's stateless forward against the reference's,
  recurrent   the distilled model prefilled on the first P tokens, then stepped token by token
              (the engine's prefill + ``sequential_forward``), against the reference's parallel
              logits at the same positions,
as relative l2 error of the logits ||z - z_ref|| / ||z_ref|| and top-1 (argmax) agreement. Both
models run in float32 on the CPU (the engine's bfloat16 MLP default would measure bfloat16).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import load_file

from lcd_cli.engines.logits import compare_models, prefill_then_steps
from lcd_cli.errors import LcdError

INSTALL = "pip install --no-deps stripedhyena==0.2.2 einops tokenizers tqdm"
# Config keys holding a torch dtype; the comparison runs every block in float32.
DTYPE_KEYS = ("params_dtype", "hyena_block_dtype", "mlp_dtype", "attn_block_dtype")
# Engine features that need CUDA-only packages; the comparison runs without them.
NO_FUSED = {"use_flashfft": False, "use_flash_depthwise": False, "use_flash_rmsnorm": False,
            "use_flash_attn": False}
DEFAULT_TOL = 1e-2  # logits rel err above which `lcd verify --engine stripedhyena` fails


def _engine() -> Any:
    try:
        from stripedhyena import model as sh_model
    except ImportError as e:
        raise LcdError(f"the StripedHyena engine is not installed ({e})", key="engine",
                       hint=f"install it with `{INSTALL}` (its flash-attn dependency is not "
                            "needed for Hyena blocks)") from e
    return sh_model


def read_config(folder: Path) -> dict[str, Any]:
    """The engine config of a model folder (config.json, config.yml or config.yaml)."""
    for name in ("config.json", "config.yml", "config.yaml"):
        path = Path(folder) / name
        if path.is_file():
            try:
                text = path.read_text()
                doc = json.loads(text) if name.endswith(".json") else yaml.safe_load(text)
            except (OSError, json.JSONDecodeError, yaml.YAMLError) as e:
                raise LcdError(f"cannot read the engine config ({e})", file=path) from e
            if not isinstance(doc, dict):
                raise LcdError("the engine config is not a mapping", file=path)
            return doc
    raise LcdError("no engine config (config.json, config.yml) in the model folder",
                   file=folder, hint="a StripedHyena model folder holds its config beside the "
                                     "weights")


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a model folder's safetensors files, ``backbone.`` prefix dropped."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        try:
            files = sorted({folder / f for f in json.loads(index.read_text())["weight_map"].values()})
        except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise LcdError(f"cannot read the index ({e})", file=index) from e
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise LcdError("no .safetensors weights in the model folder", file=folder)
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state |= {k.removeprefix("backbone."): v for k, v in load_file(f).items()}
    return state


def load_model(folder: Path) -> Any:
    """The engine's ``StripedHyena`` built from a folder's config and loaded (strictly) with its
    weights, float32, eval mode."""
    sh_model = _engine()
    from stripedhyena.utils import dotdict

    config = read_config(folder) | NO_FUSED | {k: torch.float32 for k in DTYPE_KEYS}
    config.setdefault("model_parallel_size", 1)
    if config.get("attn_layer_idxs"):
        try:
            import flash_attn  # noqa: F401
        except ImportError as e:
            raise LcdError("the model has attention blocks, which the engine builds with "
                           "flash-attn (not installed)", file=folder, key="attn_layer_idxs",
                           hint="install flash-attn (CUDA), or compare a model of Hyena "
                                "blocks only") from e
    try:
        model = sh_model.StripedHyena(dotdict(config))
    except (AttributeError, KeyError, TypeError, ValueError, AssertionError) as e:
        raise LcdError(f"the engine cannot build this config ({type(e).__name__}: {e})",
                       file=folder, hint="is it a StripedHyena config (hidden_size, "
                                         "num_layers, state_size, ...)?") from e
    state = read_weights(folder)
    own = model.state_dict()
    for key, value in own.items():  # tied embeddings: one stored copy serves both names
        if key not in state and key.startswith("unembed.") and config.get("tie_embeddings"):
            state[key] = state.get(key.replace("unembed.", "embedding_layer.", 1), value)
    try:
        model.load_state_dict({k: v.to(own[k].dtype) if k in own else v
                               for k, v in state.items()}, strict=True)
    except RuntimeError as e:
        hint = ("the config's state_size must equal the stored K (metadata lcd_state_size)"
                if "size mismatch" in str(e) else "are weights and config from one model?")
        raise LcdError(f"the engine cannot load these weights ({e})".replace("\n", " "),
                       file=folder, hint=hint) from e
    return model.float().eval()


@torch.no_grad()
def recurrent_logits(model: Any, tokens: torch.Tensor, prompt: int) -> torch.Tensor:
    """Logits (B, T, V): the engine's stateful prefill on tokens[:, :prompt], then one
    ``sequential_forward`` step per remaining token."""
    return prefill_then_steps(model, tokens, prompt, model.initialize_inference_params())


def compare_logits(reference_folder: Path, distilled_folder: Path, *, batches: int = 4,
                   length: int = 256, seed: int = 0, batch_size: int = 2) -> dict[str, Any]:
    """Logits of the distilled model against the reference's, parallel and recurrent, in this
    engine (``engines.logits.compare_models``)."""
    return compare_models(load_model, recurrent_logits, reference_folder, distilled_folder,
                          batches=batches, length=length, seed=seed, batch_size=batch_size,
                          first_token=0)
