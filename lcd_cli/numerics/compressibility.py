"""How compressible kernels are: Eckart-Young floors of their Hankel matrices (`lcd inspect`).

Dimensions: C channels, S sampled channels, L kernel length, N order.

The floor at order N is a lower bound on the relative l2 error of any N-mode diagonal SSM
fitted on the window (lcd_cli.numerics.hankel). To stay fast on long kernels and wide layers a
few channels are sampled and long Hankel matrices use a randomized SVD; the result says which,
and labels floors from a randomized SVD as estimates.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from lcd_cli.numerics.hankel import hankel_floor, hankel_shape
from lcd_cli.numerics.metrics import sample_channels

FLOOR_ORDERS = (8, 16, 32, 64)
TOLERANCES = (1e-2, 1e-3)


def compressibility(h: Tensor, *, channels: int = 16, max_order: int = 128) -> dict[str, Any]:
    """Floors at FLOOR_ORDERS (median over sampled channels) and the order needed for each
    tolerance (the smallest N whose floor is below it for every sampled channel)."""
    idx = sample_channels(h.shape[0], channels)
    sub = h[idx]  # (S, L)
    rows, cols = hankel_shape(sub.shape[1])
    top = max(1, min(max_order, (min(rows, cols) - 1) // 2))
    orders = list(range(1, top + 1))
    bound = hankel_floor(sub, orders)
    floors = bound.values  # (S, top)
    worst = floors.amax(0)  # (top,)
    order_for = {}
    for tol in TOLERANCES:
        hit = (worst <= tol).nonzero()
        order_for[f"{tol:g}"] = int(orders[int(hit[0])]) if hit.numel() else None
    return {
        "channels_sampled": int(idx.numel()),
        "svd": "exact" if bound.rigorous else "randomized (floors are estimates)",
        "floor_median": {str(n): float(floors[:, n - 1].median()) if n <= top else None
                         for n in FLOOR_ORDERS},
        "order_for": order_for,
        "max_order_searched": top,
    }


def two_sided_compressibility(k_fwd: Tensor, k_rev: Tensor, *, channels: int = 16
                              ) -> dict[str, Any]:
    """Compressibility of both halves (:func:`compressibility`) and the worse of the
    two in the same fields: per order the larger floor, per tolerance the larger order."""
    halves = {"fwd": compressibility(k_fwd, channels=channels),
              "rev": compressibility(k_rev, channels=channels)}
    f, r = halves["fwd"], halves["rev"]
    floors = {}
    for n, a in f["floor_median"].items():
        b = r["floor_median"][n]
        floors[n] = None if a is None or b is None else max(a, b)
    order_for = {}
    for tol, a in f["order_for"].items():
        b = r["order_for"][tol]
        order_for[tol] = None if a is None or b is None else max(a, b)
    return {
        "channels_sampled": f["channels_sampled"],
        "svd": f["svd"] if f["svd"] == r["svd"] else "randomized (floors are estimates)",
        "floor_median": floors,
        "order_for": order_for,
        "max_order_searched": min(f["max_order_searched"], r["max_order_searched"]),
        "halves": halves,
    }
