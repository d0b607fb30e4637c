"""Resumable runs: every fitted layer is kept as it finishes, so a rerun reuses it.

Layer 5 (pipeline). The store is a hidden folder beside the output,
``.<output name>.lcd-resume/``, holding one small safetensors file per finished layer (its
parts as tensors, its report row as JSON metadata). A layer's file name is the sha256 of
everything its result depends on: the source checkpoint's sha256, the layer's name and family
config (options included), the fit settings, the layout and lcd's version — so a rerun with
any of them changed fits afresh. The store is removed once the outputs are written.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

from safetensors import safe_open

from lcd_cli import __version__
from lcd_cli.io.checkpoint import OutEntry, atomic_output, write_safetensors
from lcd_cli.kinds import FitSettings, PlannedLayer
from lcd_cli.layouts import LayerResult

STATS_KEY = "lcd_layer_stats"


def store_for(output: Path) -> Path:
    return output.with_name(f".{output.name}.lcd-resume")


class ResumeStore:
    """Finished layers of one run (see the module docstring)."""

    def __init__(self, folder: Path, source_sha: str, settings: FitSettings, layout: str) -> None:
        self.folder = folder
        self._base = {"source": source_sha, "order": settings.order, "tol": settings.tol,
                      "max_order": settings.max_order, "seed": settings.seed, "layout": layout,
                      "lcd": __version__}
        if settings.poles != "complex":  # keys of complex fits stay those of earlier versions
            self._base["poles"] = settings.poles
        self.reused: list[str] = []
        self.saved: list[str] = []

    def _path(self, planned: PlannedLayer) -> Path:
        cfg = planned.layer.config
        key = {**self._base, "layer": planned.name,
               "config": {**cfg.raw, "options": cfg.options}}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode())
        return self.folder / f"{digest.hexdigest()[:32]}.safetensors"

    def load(self, planned: PlannedLayer) -> LayerResult | None:
        """The kept result of this layer, or None (also for an unreadable file)."""
        path = self._path(planned)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="pt") as f:
                stats = json.loads(f.metadata()[STATS_KEY])
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open)
        except (OSError, KeyError, ValueError, json.JSONDecodeError):
            return None
        parts: dict[str, Any] = {}
        for key, value in tensors.items():
            part, _, what = key.rpartition(".")
            parts.setdefault(part, {})[what] = value
        self.reused.append(planned.name)
        return LayerResult(planned.name, {p: (v["poles"], v["residues"])
                                          for p, v in parts.items()}, stats)

    def save(self, planned: PlannedLayer, result: LayerResult) -> None:
        try:
            stats = json.dumps(result.stats)
        except (TypeError, ValueError):  # a row that JSON cannot hold: fit it again next time
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        entries = [OutEntry.tensor(f"{part}.{what}", value)
                   for part, pair in result.parts.items()
                   for what, value in zip(("poles", "residues"), pair, strict=True)]
        with atomic_output(self._path(planned), force=True) as tmp:
            write_safetensors(tmp, entries, {STATS_KEY: stats})
        self.saved.append(planned.name)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
