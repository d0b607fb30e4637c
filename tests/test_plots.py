"""`lcd distill --plot DIR` and `lcd inspect --plot DIR`: one PNG per layer, not blank, and a
clean error without matplotlib."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lcd_cli.examples import make_example
from tests.conftest import lcd

TINY = {"d_model": 6, "n_layers": 2, "l_max": 63}
LAYERS = [f"hyena.backbone.layers.{i}.mixer.filter_fn" for i in (0, 1)]
MIN_PIXEL_STD = 0.05  # a figure with curves and text; a blank one has std 0


def _check_png(path: Path) -> None:
    from matplotlib.image import imread

    img = imread(path)  # (H, W, 4) floats in [0, 1]
    assert img.shape[0] >= 400 and img.shape[1] >= 500, img.shape
    assert img[..., :3].std() > MIN_PIXEL_STD  # not blank


def test_distill_plot(write_ckpt, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    src = write_ckpt(make_example("hyenadna", **TINY), name="hy.safetensors")
    result = lcd("distill", src, "--order", "2", "--device", "cpu", "--plot", tmp_path / "p")
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "p").iterdir())
    assert [f.name for f in files] == [f"{n}.fit.png" for n in LAYERS]
    for f in files:
        _check_png(f)


def test_distill_plot_two_sided(write_ckpt, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    src = write_ckpt(make_example("long-conv-bidir", d_model=3, n_layers=1, length=63,
                                  channels=2), name="bi.safetensors")
    result = lcd("distill", src, "--order", "2", "--device", "cpu", "--plot", tmp_path / "p",
                 "--set", "squash_lambda=0.001")  # the example's value (an ambiguous option)
    assert result.exit_code == 0, result.output
    (png,) = (tmp_path / "p").iterdir()
    _check_png(png)


def test_inspect_plot(write_ckpt, tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    src = write_ckpt(make_example("hyenadna", **TINY), name="hy.safetensors")
    result = lcd("inspect", src, "--plot", tmp_path / "p", "--json")
    assert result.exit_code == 0, result.output
    files = sorted((tmp_path / "p").iterdir())
    assert [f.name for f in files] == [f"{n}.hankel.png" for n in LAYERS]
    for f in files:
        _check_png(f)


@pytest.mark.parametrize("command", ["distill", "inspect"])
def test_plot_without_matplotlib_is_a_clean_error(write_ckpt, tmp_path: Path, command: str,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    src = write_ckpt(make_example("hyenadna", **TINY), name="hy.safetensors")
    args = ["--order", "2"] if command == "distill" else []
    result = lcd(command, src, *args, "--plot", tmp_path / "p")
    assert result.exit_code == 2 and "needs matplotlib" in result.output
    assert sorted(p.name for p in src.parent.iterdir()) == ["hy.safetensors"]  # nothing written
