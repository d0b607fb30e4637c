"""The vortex engine (PyPI ``vtx`` 1.1.0, Evo 2 / StripedHyena 2) as a client: model-level
comparison.

Layer 5. Dimensions: B batch, T sequence length, V vocabulary, P prompt length (T // 2).

A model folder holds the engine's YAML config (``config.yml``; ``config.yaml`` or
``config.json`` are read too) and its weights (``*.safetensors``, or a
``model.safetensors.index.json``) in the engine's key names (``blocks.{i}.filter.log_poles``
...; a ``backbone.`` prefix is dropped). The distilled folder is what ``lcd distill --layout
vortex`` writes, with ``state_size = K`` in its config.

Loading: the engine's ``StripedHyena`` is built from the config with every block in float32 and
the fused CUDA paths off (:data:`NO_FUSED`), and its own ``custom_load_state_dict`` (the method
its ``load_checkpoint`` calls) loads the weights, strictly. ``load_checkpoint`` itself reads a
torch pickle and then casts everything to bfloat16 except parameters whose name contains
``log_poles`` or ``residues``: that measures bfloat16, not the distillation, so it is not used
here (the distilled filter keeps those names and stays float32 under it).

:func:`compare_logits` runs both models on seeded random token batches and measures
  parallel    the distilled model's stateless forward against the reference's,
  recurrent   the distilled model prefilled on the first P tokens (the engine's
              ``prefill_style``, FFT by default), then stepped token by token (its
              ``sequential_forward``: ``step_iir`` for Hyena-LI), against the reference's
              parallel logits at the same positions,
as relative l2 error of the logits ||z - z_ref|| / ||z_ref|| and top-1 (argmax) agreement, the
report of ``lcd verify --engine stripedhyena``.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Any

import torch

from lcd_cli.engines.logits import compare_models, prefill_then_steps
from lcd_cli.engines.stripedhyena import read_config, read_weights
from lcd_cli.errors import LcdError

INSTALL = "pip install vtx==1.1.0 (with its CUDA dependencies: flash-attn, triton)"
# Config keys holding a torch dtype; the comparison runs every block in float32.
DTYPE_KEYS = ("params_dtype", "hyena_block_dtype", "mlp_dtype", "attn_block_dtype")
# Engine features that need CUDA-only packages or change the numerics; the comparison runs
# the engine's plain torch paths.
NO_FUSED = {"use_flash_attn": False, "use_flash_rmsnorm": False, "use_flash_depthwise": False,
            "use_flashfft": False, "use_fp8_input_projections": False, "use_hcs_kernel": False,
            "use_hcm_kernel": False, "use_hcl_kernel": False, "print_activations": False,
            "compile": False}
DEFAULT_TOL = 1e-2  # logits rel err above which `lcd verify --engine vortex` fails
BLOCK_KINDS = ("mha", "hcl", "hcm", "hcs")  # the engine's inference-parameter groups


def _engine() -> tuple[Any, Any]:
    try:
        from vortex.model import model as vortex_model
        from vortex.model.utils import dotdict
    except ImportError as e:
        raise LcdError(f"the vortex engine is not installed or cannot be imported ({e})",
                       key="engine", hint=f"install it with `{INSTALL}`") from e
    return vortex_model, dotdict


def load_model(folder: Path) -> Any:
    """The engine's ``StripedHyena`` built from a folder's config and loaded (strictly) with its
    weights by the engine's own ``custom_load_state_dict``, float32, eval mode."""
    vortex_model, dotdict = _engine()
    config = read_config(folder)
    config.pop("lcd", None)
    config |= NO_FUSED | {k: torch.float32 for k in DTYPE_KEYS}
    try:
        with contextlib.redirect_stdout(sys.stderr):
            model = vortex_model.StripedHyena(dotdict(config))
    except (AttributeError, KeyError, TypeError, ValueError, AssertionError,
            NotImplementedError) as e:
        raise LcdError(f"the engine cannot build this config ({type(e).__name__}: {e})",
                       file=folder, hint="is it a vortex config (hidden_size, num_layers, "
                                         "hcl_layer_idxs, state_size, ...)?") from e
    model = model.float()
    own = model.state_dict()
    state = {k: v.to(own[k].dtype) if k in own else v for k, v in read_weights(folder).items()}
    try:
        with contextlib.redirect_stdout(sys.stderr):
            model.custom_load_state_dict(state, strict=True)
    except RuntimeError as e:
        hint = ("the config's state_size must equal the stored K (metadata lcd_state_size)"
                if "size mismatch" in str(e) else "are weights and config from one model?")
        raise LcdError(f"the engine cannot load these weights ({e})".replace("\n", " "),
                       file=folder, hint=hint) from e
    return model.float().eval()


@torch.no_grad()
def recurrent_logits(model: Any, tokens: torch.Tensor, prompt: int) -> torch.Tensor:
    """Logits (B, T, V): the engine's stateful prefill on tokens[:, :prompt], then one step per
    remaining token (sequence offsets advanced as the engine's generator does)."""
    with contextlib.redirect_stdout(sys.stderr):  # the engine prints its max_seqlen
        params = model.initialize_inference_params(max_seqlen=tokens.shape[1])
    for kind in BLOCK_KINDS:
        params[kind].max_batch_size = tokens.shape[0]

    def advance(state: Any, t: int) -> None:
        for kind in BLOCK_KINDS:
            state[kind].seqlen_offset = t

    return prefill_then_steps(model, tokens, prompt, params, advance)


def compare_logits(reference_folder: Path, distilled_folder: Path, *, batches: int = 4,
                   length: int = 256, seed: int = 0, batch_size: int = 2) -> dict[str, Any]:
    """Logits of the distilled model against the reference's, parallel and recurrent, in this
    engine (``engines.logits.compare_models``)."""
    return compare_models(load_model, recurrent_logits, reference_folder, distilled_folder,
                          batches=batches, length=length, seed=seed, batch_size=batch_size,
                          first_token=1)  # token ids from 1, as this client has drawn them
