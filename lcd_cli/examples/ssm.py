"""Example checkpoints of SSM-parameterised long convolutions: S4D, S4 (diagonal / DPLR), H3.

Real upstream key layouts with surrounding tensors, deterministic from a generator, upstream
initialisations (S4D-Lin A = -1/2 + i pi n; HiPPO-LegS DPLR for S4; log dt ~ U[log 1e-3,
log 1e-1]) moved a little, as training does, so that the kernels look trained.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lcd_cli.examples.weights import Tensors, linear
from lcd_cli.examples.weights import uniform as _uniform
from lcd_cli.families.kernels import s4_dplr

F64 = torch.float64


def _log_dt(g: torch.Generator, heads: int) -> Tensor:
    """log dt ~ U[log 1e-3, log 1e-1] (upstream dt_min, dt_max)."""
    lo, hi = math.log(1e-3), math.log(1e-1)
    return torch.rand(heads, generator=g, dtype=F64) * (hi - lo) + lo  # (H,)


def _cnormal(g: torch.Generator, *shape: int) -> Tensor:
    """Standard complex normal (torch.randn cfloat: real, imag each N(0, 1/2))."""
    re = torch.randn(*shape, generator=g, dtype=F64)
    im = torch.randn(*shape, generator=g, dtype=F64)
    return torch.complex(re, im) / math.sqrt(2)


def _s4d_lin(g: torch.Generator, heads: int, modes: int) -> tuple[Tensor, Tensor]:
    """S4D-Lin A = -1/2 + i pi n, jittered: (-Re A, Im A), each (H, N) positive."""
    n = torch.arange(modes, dtype=F64).expand(heads, modes)  # (H, N)
    real = 0.5 * torch.exp(0.3 * torch.randn(heads, modes, generator=g, dtype=F64))  # (H, N)
    imag = math.pi * n * (1 + 0.02 * torch.randn(heads, modes, generator=g, dtype=F64))
    return real, imag.abs()


def _decaying_c(g: torch.Generator, *shape: int) -> Tensor:
    """C with energy falling off over the modes, as trained S4 layers have (..., N) complex."""
    modes = shape[-1]
    weight = 1 / (1 + torch.arange(modes, dtype=F64) / 4)  # (N,)
    return _cnormal(g, *shape) * weight


def s4d(g: torch.Generator, d_model: int = 32, n_layers: int = 2, d_state: int = 64,
        d_input: int = 3, d_output: int = 10) -> Tensors:
    """state-spaces/s4 example.py S4Model of S4D layers (s4_layers.{i}.kernel.*)."""
    modes = d_state // 2
    out: Tensors = linear(g, "encoder", d_model, d_input)  # S4Model (example.py) wrapper
    for i in range(n_layers):
        b = f"s4_layers.{i}"
        real, imag = _s4d_lin(g, d_model, modes)
        out |= {
            f"{b}.D": torch.randn(d_model, generator=g, dtype=F64),
            f"{b}.kernel.C": torch.view_as_real(_decaying_c(g, d_model, modes)).contiguous(),
            f"{b}.kernel.log_dt": _log_dt(g, d_model),
            f"{b}.kernel.log_A_real": torch.log(real),
            f"{b}.kernel.A_imag": imag,
            f"{b}.output_linear.0.weight": _uniform(g, 2 * d_model, d_model, 1, fan_in=d_model),
            f"{b}.output_linear.0.bias": _uniform(g, 2 * d_model, fan_in=d_model),
            f"norms.{i}.weight": torch.ones(d_model, dtype=F64),
            f"norms.{i}.bias": torch.zeros(d_model, dtype=F64),
        }
    out |= linear(g, "decoder", d_output, d_model)
    return out


def hippo_legs_dplr(d_state: int) -> tuple[Tensor, Tensor, Tensor]:
    """HiPPO-LegS in DPLR form (upstream ``nplr('legs', N)``): Lambda, P, B, each (N/2,).

    A_legs + P P^T = -1/2 I + skew; its eigenvectors V (unitary) give Lambda, P = V^* P,
    B = V^* B (imaginary part clipped to [-2, 2]); one of each conjugate pair is kept.
    """
    q = torch.arange(d_state, dtype=F64)
    r = torch.sqrt(2 * q + 1)  # (N,)
    a = -torch.where(q[:, None] > q[None, :], r[:, None] * r[None, :], torch.diag(q + 1))
    b = r.clone()  # (N,)
    p = torch.sqrt(0.5 + q)  # (N,)
    ap = a + p[:, None] * p[None, :]  # (N, N) = -1/2 I + skew-symmetric
    w_im, vec = torch.linalg.eigh(ap.to(torch.complex128) * -1j)  # (N,), (N, N)
    order = torch.argsort(w_im)
    w = torch.diagonal(ap).mean() + 1j * w_im[order]  # (N,)
    vec = vec[:, order][:, : d_state // 2]  # (N, N/2)
    v_inv = vec.conj().T  # (N/2, N)
    lam = w[: d_state // 2]  # (N/2,) negative imaginary parts
    B = v_inv @ b.to(torch.complex128)  # (N/2,)
    B = torch.complex(B.real, B.imag.clamp(-2.0, 2.0))
    P = v_inv @ p.to(torch.complex128)  # (N/2,)
    return lam, P, B


def s4(g: torch.Generator, d_model: int = 32, n_layers: int = 2, d_state: int = 64,
       l_max: int = 1024, dplr: bool = True, d_input: int = 3, d_output: int = 10) -> Tensors:
    """S4Model of S4 blocks (state-spaces/s4 models/s4/s4.py S4Block -> FFTConv -> kernel):
    s4_layers.{i}.layer.kernel.{inv_dt, A_real, A_imag, B, C[, P, l_kernel]}, D (1, H).

    dplr: SSMKernelDPLR with HiPPO-LegS init, C stored as C~ = (I - dA^l_max)^T C attuned to
    l_kernel = l_max; else SSMKernelDiag with S4D-Lin init. dt_transform 'exp'.
    """
    modes = d_state // 2
    out: Tensors = linear(g, "encoder", d_model, d_input)  # S4Model (example.py) wrapper
    for i in range(n_layers):
        b = f"s4_layers.{i}"
        k = f"{b}.layer.kernel"
        inv_dt = _log_dt(g, d_model)[:, None]  # (H, 1), exp transform
        C = _decaying_c(g, 1, d_model, modes)  # (1, H, N)
        if dplr:
            lam, P, B = hippo_legs_dplr(d_state)  # (N,) each
            jitter = 1 + 0.05 * torch.randn(d_model, modes, generator=g, dtype=F64)
            lam = torch.complex(lam.real * jitter, lam.imag.expand(d_model, modes))  # (H, N)
            P = P * (1 + 0.05 * _cnormal(g, 1, d_model, modes))  # (1, H, N)
            B = B * (1 + 0.05 * _cnormal(g, d_model, modes))  # (H, N)
            dA, _ = s4_dplr.dense_system(torch.exp(inv_dt), lam, P, B)
            C, _ = s4_dplr.attune(C, dA, 0, l_max)  # (1, H, N) C~
            real, imag = -lam.real, -lam.imag  # stored under the exp / none transforms
            out |= {f"{k}.P": torch.view_as_real(P).contiguous(),
                    f"{k}.l_kernel": torch.tensor(l_max, dtype=torch.int64)}
        else:
            real, imag = _s4d_lin(g, d_model, modes)
            B = torch.ones(d_model, modes, dtype=torch.complex128)  # (H, N)
        out |= {
            f"{k}.inv_dt": inv_dt,
            f"{k}.A_real": torch.log(real),
            f"{k}.A_imag": imag.clamp_min(1e-4),
            f"{k}.B": torch.view_as_real(B[None]).contiguous(),
            f"{k}.C": torch.view_as_real(C).contiguous(),
            f"{b}.layer.D": torch.randn(1, d_model, generator=g, dtype=F64),
            f"{b}.output_linear.weight": _uniform(g, 2 * d_model, d_model, fan_in=d_model),
            f"{b}.output_linear.bias": _uniform(g, 2 * d_model, fan_in=d_model),
            f"norms.{i}.weight": torch.ones(d_model, dtype=F64),
            f"norms.{i}.bias": torch.zeros(d_model, dtype=F64),
        }
    out |= linear(g, "decoder", d_output, d_model)
    return out


def s4_diag(g: torch.Generator, **sizes: int) -> Tensors:
    """S4 with the diagonal kernel (SSMKernelDiag, S4D-Lin init)."""
    return s4(g, dplr=False, **sizes)


def h3(g: torch.Generator, d_model: int = 32, n_layers: int = 3, d_state: int = 64,
       vocab: int = 64, attn_layers: tuple[int, ...] = (1,)) -> Tensors:
    """H3 language model (HazyResearch/H3 SSMLMHeadModel): backbone.layers.{i}.mixer with the
    shift SSM (ssm_k_kernel), the diagonal SSM (kernel.kernel, S4D-Lin) and D; attention in
    ``attn_layers``."""
    modes = d_state // 2
    out: Tensors = {"backbone.embeddings.word_embeddings.weight": 0.02 * torch.randn(
        vocab, d_model, generator=g, dtype=F64)}
    for i in range(n_layers):
        b = f"backbone.layers.{i}"
        m = f"{b}.mixer"
        if i in attn_layers:
            out |= {f"{m}.Wqkv.weight": _uniform(g, 3 * d_model, d_model, fan_in=d_model),
                    f"{m}.Wqkv.bias": torch.zeros(3 * d_model, dtype=F64),
                    f"{m}.out_proj.weight": _uniform(g, d_model, d_model, fan_in=d_model),
                    f"{m}.out_proj.bias": torch.zeros(d_model, dtype=F64)}
        else:
            shift_b = torch.zeros(d_model, d_state, dtype=F64)
            shift_b[:, 0] = 1.0  # B = e_1: the shift SSM is a plain FIR filter
            real, imag = _s4d_lin(g, d_model, modes)
            for proj in ("q_proj", "k_proj", "v_proj", "output_linear"):
                out |= {f"{m}.{proj}.weight": _uniform(g, d_model, d_model, fan_in=d_model),
                        f"{m}.{proj}.bias": _uniform(g, d_model, fan_in=d_model)}
            out |= {
                f"{m}.ssm_k_kernel.kernel.B": shift_b,
                f"{m}.ssm_k_kernel.kernel.C": _uniform(g, 1, d_model, d_state, fan_in=d_state),
                f"{m}.ssm_k_D": torch.randn(d_model, generator=g, dtype=F64),
                f"{m}.kernel.kernel.log_dt": _log_dt(g, d_model),
                f"{m}.kernel.kernel.inv_A_real": torch.log(real),
                f"{m}.kernel.kernel.A_imag": imag,
                f"{m}.kernel.kernel.B": torch.view_as_real(
                    torch.ones(d_model, modes, dtype=torch.complex128)).contiguous(),
                f"{m}.kernel.kernel.C": torch.view_as_real(
                    _decaying_c(g, 1, d_model, modes)).contiguous(),
                f"{m}.D": torch.randn(d_model, generator=g, dtype=F64),
            }
        out |= {
            f"{b}.norm1.weight": torch.ones(d_model, dtype=F64),
            f"{b}.norm1.bias": torch.zeros(d_model, dtype=F64),
            f"{b}.mlp.fc1.weight": _uniform(g, 4 * d_model, d_model, fan_in=d_model),
            f"{b}.mlp.fc1.bias": _uniform(g, 4 * d_model, fan_in=d_model),
            f"{b}.mlp.fc2.weight": _uniform(g, d_model, 4 * d_model, fan_in=4 * d_model),
            f"{b}.mlp.fc2.bias": _uniform(g, d_model, fan_in=4 * d_model),
            f"{b}.norm2.weight": torch.ones(d_model, dtype=F64),
            f"{b}.norm2.bias": torch.zeros(d_model, dtype=F64),
        }
    out |= {"backbone.ln_f.weight": torch.ones(d_model, dtype=F64),
            "backbone.ln_f.bias": torch.zeros(d_model, dtype=F64)}
    return out
