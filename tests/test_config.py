"""Family configs: validation, detection, ambiguity, and mis-shaped or missing parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from lcd_cli.errors import LcdError
from lcd_cli.examples import make_example
from lcd_cli.families.config import builtin_config_names, load_builtin, parse_config
from lcd_cli.families.layers import layer_summary, materialize, select_configs
from lcd_cli.io.checkpoint import open_checkpoint
from tests.conftest import SMALL

CONFIGS = Path(__file__).parents[1] / "configs"


def test_builtins_are_valid_and_shipped() -> None:
    names = builtin_config_names()
    assert {"hyenadna-hf", "hyena-safari", "stripedhyena", "safari-long-conv"} <= set(names)
    assert names == sorted(p.stem for p in CONFIGS.glob("*.yaml"))
    for name in names:
        assert load_builtin(name).name == name


def test_invalid_config_lists_every_problem() -> None:
    text = """
name: broken
family: hyena
layer: '(unclosed'
required: []
materializer: hyena
options: {shift: fast, colour: red}
causal: maybe
extra: 1
"""
    with pytest.raises(LcdError) as e:
        parse_config(text, "broken.yaml")
    msg = e.value.message
    for needle in ("broken.yaml", "unknown field 'extra'", "missing field 'generator'",
                   "'layer' is not a valid regex", "'required' must name at least one",
                   "option 'shift'", "no option 'colour'", "'causal' must be bool"):
        assert needle in msg, needle


def test_unknown_materializer_and_bad_yaml() -> None:
    with pytest.raises(LcdError, match="unknown materializer 'magic'"):
        parse_config("name: x\nfamily: x\nlayer: a\nrequired: [k]\ngenerator: [k]\n"
                     "materializer: magic\n", "x.yaml")
    with pytest.raises(LcdError, match="not valid YAML"):
        parse_config("name: [unclosed", "y.yaml")


def test_unknown_family(write_ckpt) -> None:
    ckpt = open_checkpoint(write_ckpt("hyenadna"))
    with pytest.raises(LcdError, match="unknown family 'hyena-9000'") as e:
        select_configs(ckpt, "hyena-9000")
    assert "hyenadna-hf" in e.value.message


@pytest.mark.parametrize("name", ["hyenadna", "stripedhyena", "long-conv"])
def test_detection_single_and_sharded(write_ckpt, name: str) -> None:
    expect = {"hyenadna": "hyenadna-hf", "stripedhyena": "stripedhyena",
              "long-conv": "safari-long-conv"}[name]
    for shards in (1, 3):
        ckpt = open_checkpoint(write_ckpt(name, name=f"{name}-{shards}", shards=shards))
        sets = ["squash_lambda=0.001"] if name == "long-conv" else None  # not stored
        found = select_configs(ckpt, sets=sets)
        assert [cfg.name for cfg, _ in found] == [expect]
        assert len(found[0][1]) == 2


def test_nothing_found_says_so(write_ckpt) -> None:
    ckpt = open_checkpoint(write_ckpt({"just.a.weight": torch.ones(2)}))
    with pytest.raises(LcdError, match="no long-conv layer found") as e:
        select_configs(ckpt)
    assert "--family" in e.value.message


def test_ambiguous_configs(write_ckpt) -> None:
    ckpt = open_checkpoint(write_ckpt("hyenadna"))
    with pytest.raises(LcdError, match="several family configs match"):
        select_configs(ckpt, "hyenadna-hf,hyena-safari,hyenadna-hf")


def test_mis_shaped_parameter(write_ckpt) -> None:
    t = make_example("hyenadna", **SMALL["hyenadna"])
    key = "hyena.backbone.layers.1.mixer.filter_fn.implicit_filter.2.weight"
    t[key] = torch.ones(7, 3)
    ckpt = open_checkpoint(write_ckpt(t))
    (_, layers), = select_configs(ckpt)
    with pytest.raises(LcdError, match="do not chain") as e:
        layer_summary(ckpt, layers[1])
    assert key in e.value.message


def test_missing_optional_parameter_needed(write_ckpt) -> None:
    t = make_example("hyenadna", **SMALL["hyenadna"])
    t = {k: v for k, v in t.items() if "freq" not in k and "pos_emb" not in k}
    ckpt = open_checkpoint(write_ckpt(t))
    (_, layers), = select_configs(ckpt)
    with pytest.raises(LcdError, match="l_max is unknown"):
        layer_summary(ckpt, layers[0])


def test_skip_term_shape_mismatch(write_ckpt) -> None:
    t = make_example("stripedhyena", **SMALL["stripedhyena"])
    t["backbone.blocks.0.filter.D"] = torch.ones(3)
    ckpt = open_checkpoint(write_ckpt(t))
    (_, layers), = select_configs(ckpt, options={"length": 32})
    with pytest.raises(LcdError, match="skip term has 3 values") as e:
        materialize(ckpt, layers[0])
    assert "backbone.blocks.0.filter.D" in e.value.message


def test_nan_in_generator(write_ckpt) -> None:
    t = make_example("stripedhyena", **SMALL["stripedhyena"])
    t["backbone.blocks.2.filter.residues"][0, 0, 0, 0] = float("inf")
    ckpt = open_checkpoint(write_ckpt(t))
    (_, layers), = select_configs(ckpt)
    with pytest.raises(LcdError, match="NaN or Inf") as e:
        materialize(ckpt, layers[1])
    assert "backbone.blocks.2.filter.residues" in e.value.message
