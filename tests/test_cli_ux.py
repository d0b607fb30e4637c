"""Runs a user can watch, resume and read (issue 16, the command line): progress lines and the
heartbeat, the log, report naming, verify's pairing by sha256 and report validation, one
meaning per option, tables that fit 80 columns, help text, and the report's additions."""

from __future__ import annotations

import io
import itertools
import json
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import typer.main
import yaml
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from lcd_cli.cli import app
from lcd_cli.examples import EXAMPLES, make_example, write_example
from lcd_cli.families.layers import materialize, select_configs
from lcd_cli.io.checkpoint import open_checkpoint
from lcd_cli.kinds import causal
from lcd_cli.numerics.metrics import kernel_errors
from lcd_cli.numerics.two_sided import two_sided_errors
from lcd_cli.pipeline import progress as progress_events
from lcd_cli.pipeline.aliases import FAMILY_ALIASES
from lcd_cli.pipeline.naming import log_path_for, report_path_for
from lcd_cli.pipeline.progress import Progress
from tests.conftest import lcd, naive_modal

TINY = {"d_model": 6, "n_layers": 2, "l_max": 63}  # hyenadna: C=6 channels, L=63
FILTER = "hyena.backbone.layers.{}.mixer.filter_fn"


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One tiny hyenadna checkpoint distilled once (--tol 0.3), shared by the read-only tests."""
    root = tmp_path_factory.mktemp("ux")
    src = write_example(make_example("hyenadna", **TINY), root / "hy.safetensors")[0]
    out = root / "other.safetensors"
    result = lcd("distill", src, "--tol", "0.3", "--max-order", "3", "-o", out, "--device", "cpu")
    assert result.exit_code == 0, result.output
    return {"src": src, "out": out, "report": root / "other.report.yaml", "root": root}


# ---------------------------------------------------------------- progress


def test_heartbeat_speaks_after_silence_only() -> None:
    now = [100.0]
    lines: list[str] = []
    p = Progress([lambda lvl, msg: lines.append(msg)], heartbeat_s=10.0, clock=lambda: now[0])
    p.event("start", layers=2, source="x", device="cpu", order=4,
            shapes={"a": "C=64, L=8192"})
    p.event("group", kind="causal", layers=["a", "b"])
    lines.clear()
    now[0] += 9.9
    assert not p.beat() and not lines
    now[0] += 0.2
    assert p.beat()
    assert lines == ["still fitting layer 1/2 a (C=64, L=8192): 10 s in this step, 10 s in all"]
    assert not p.beat()  # it just spoke
    p.event("layer", stats={"name": "a", "order": 4, "rel_l2": {"median": 1e-3, "max": 2e-3},
                            "floor": 1e-4, "seconds": 1.0})
    now[0] += 10.0
    assert p.beat() and "still fitting layer 2/2 b" in lines[-1]


def test_heartbeat_names_the_fitters_latest_step() -> None:
    now = [0.0]
    lines: list[str] = []
    p = Progress([lambda lvl, msg: lines.append(msg)], heartbeat_s=10.0, clock=lambda: now[0])
    p.event("start", layers=2, source="x", device="cpu", order=4)
    p.event("group", kind="causal", layers=["a", "b"])
    p.fit_step("N=4: 64/256 channels fitted")
    now[0] += 11.0
    assert p.beat() and lines[-1].startswith(
        "still fitting layer 1/2 a: N=4: 64/256 channels fitted: 11 s in this step")
    p.event("layer", stats={"name": "a", "order": 4, "rel_l2": {"median": 1.0, "max": 1.0}})
    now[0] += 11.0
    assert p.beat() and "channels fitted" not in lines[-1]  # the detail was layer a's


@pytest.mark.parametrize("how", [["--order", "3"], ["--tol", "0.3", "--max-order", "4"]],
                         ids=["order", "tol"])
def test_distill_log_has_the_steps_inside_each_layer(write_ckpt, how: list[str]) -> None:
    src = write_ckpt(make_example("hyenadna", **TINY), name="hy.safetensors")
    result = lcd("distill", src, *how, "--device", "cpu")
    assert result.exit_code == 0, result.output
    log = log_path_for(report_path_for(src.with_name("hy.lcd.safetensors"))).read_text()
    assert "materializing the kernels" in log and "scoring the stored parameters" in log
    if how[0] == "--order":
        assert re.search(r"N=3: \d+/\d+ channels fitted", log)
    else:  # every bisection step, with its outcome
        assert re.search(r"bisection fit 1/<=3 at N=4: \d+/\d+ channels", log)
        assert re.search(r"bisection fit 2/<=3 at N=2: worst rel_l2 \S+ (meets|misses) tol", log)
    report = yaml.safe_load(src.with_name("hy.lcd.report.yaml").read_text())
    for row in report["layers"]:
        assert set(row["phases"]) == {"materialize", "fit", "score"}
        assert sum(row["phases"].values()) <= row["seconds"] + 1e-2


def test_heartbeat_thread_writes_lines() -> None:
    buf = io.StringIO()
    with Progress([progress_events.line_sink(buf)], heartbeat_s=0.05) as p:
        p.event("step", message="L=64: fitting")
        time.sleep(0.5)
    beats = [ln for ln in buf.getvalue().splitlines() if "still L=64: fitting" in ln]
    assert beats and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d lcd: ", ln) for ln in beats)


def test_tol_run_says_it_bisects() -> None:
    lines: list[str] = []
    Progress([lambda lvl, msg: lines.append(msg)], heartbeat_s=None).event(
        "start", layers=1, source="x", tol=0.05, max_order=64)
    assert any("bisection on 1..64: up to 7 fits per layer" in ln for ln in lines)


def test_distill_outside_a_terminal_prints_a_line_every_interval(
        write_ckpt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CliRunner is not a TTY: plain timestamped lines; a fit slower than the heartbeat
    interval still gets lines (interval shortened for the test), and the log has them all."""
    src = write_ckpt(make_example("hyenadna", **TINY), name="hy.safetensors")
    monkeypatch.setattr(progress_events, "HEARTBEAT_S", 0.2)
    fit = causal.fit_kernel

    def slow_fit(*args: object, **kw: object) -> object:
        time.sleep(1.0)  # a long fit, as the heartbeat sees it
        return fit(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(causal, "fit_kernel", slow_fit)
    result = lcd("distill", src, "--order", "2", "--device", "cpu")
    assert result.exit_code == 0, result.output
    lines = [ln for ln in result.stderr.splitlines() if " lcd: " in ln]
    assert sum("still fitting layer 1/2" in ln for ln in lines) >= 2
    assert any("layer 2/2 " + FILTER.format(1) in ln for ln in lines)
    stamps = [time.mktime(time.strptime(ln.split(" lcd: ")[0], "%Y-%m-%dT%H:%M:%S"))
              for ln in lines]
    assert max(b - a for a, b in itertools.pairwise(stamps)) <= 2  # 1 s stamps
    log = log_path_for(report_path_for(src.with_name("hy.lcd.safetensors")))
    assert log.name == "hy.lcd.report.log"
    assert all(ln.split(" lcd: ")[1] in log.read_text() for ln in lines[:3])


def test_quiet_and_verbose(write_ckpt) -> None:
    src = write_ckpt(make_example("hyenadna", **TINY), name="hy.safetensors")
    quiet = lcd("-q", "distill", src, "--order", "2", "--device", "cpu")
    assert quiet.exit_code == 0 and quiet.stderr == ""
    loud = lcd("-v", "distill", src, "--order", "2", "--device", "cpu", "--force")
    assert loud.exit_code == 0 and "fitting layer 2/2 " + FILTER.format(1) in loud.stderr


# ---------------------------------------------------------------- report naming and verify


def test_report_follows_the_output(run: dict[str, Path]) -> None:
    assert run["report"].exists() and run["report"].with_suffix(".log").exists()
    assert not run["src"].with_name("hy.lcd.report.yaml").exists()
    again = lcd("distill", run["src"], "--order", "2", "-o", run["root"] / "third.safetensors",
                "--device", "cpu")  # another -o from the same source does not collide
    assert again.exit_code == 0, again.output
    assert (run["root"] / "third.report.yaml").exists()
    # verify finds other.report.yaml by the same rule and uses its tolerance, not 1e-2
    doc = json.loads(lcd("verify", run["out"], "-r", run["src"], "--json").stdout)
    assert (doc["tol"], doc["tol_source"], doc["report"]) == (0.3, "report", str(run["report"]))


def test_relative_paths_in_the_current_folder(write_ckpt, monkeypatch: pytest.MonkeyPatch
                                              ) -> None:
    """`lcd distill m.safetensors` then `lcd verify m.lcd.safetensors -r m.safetensors`, run
    where the files are (plain names, parent '.'), finds the report beside the output."""
    src = write_ckpt(make_example("hyenadna", **TINY), name="m.safetensors")
    monkeypatch.chdir(src.parent)
    assert lcd("distill", "m.safetensors", "--tol", "0.3", "--max-order", "4", "--device",
               "cpu").exit_code == 0
    doc = json.loads(lcd("verify", "m.lcd.safetensors", "-r", "m.safetensors", "--json").stdout)
    assert doc["tol_source"] == "report" and Path(doc["report"]).name == "m.lcd.report.yaml"
    assert report_path_for(Path(".")) == src.parent.with_name(src.parent.name + ".report.yaml")


def test_verify_pairs_report_and_source_by_sha256(run: dict[str, Path]) -> None:
    third = run["root"] / "third.safetensors"
    if not third.exists():
        assert lcd("distill", run["src"], "--order", "2", "-o", third, "--device", "cpu"
                   ).exit_code == 0
    wrong = lcd("verify", run["out"], "-r", run["src"], "--report", run["root"] / "third.report.yaml")
    assert wrong.exit_code == 2 and "belongs to another checkpoint" in wrong.output
    ok = lcd("verify", run["out"], "-r", run["src"], "--report",
             run["root"] / "third.report.yaml", "--no-check-report", "--json")
    assert ok.exit_code in (0, 1) and json.loads(ok.stdout)["tol_source"] == "default"
    other_src = write_example(make_example("hyenadna", seed=1, **TINY),
                              run["root"] / "other-source.safetensors")[0]
    bad = lcd("verify", run["out"], "-r", other_src)
    assert bad.exit_code == 2
    assert "this is not the checkpoint it was distilled from" in " ".join(bad.output.split())
    forced = lcd("verify", run["out"], "-r", other_src, "--no-check-source")
    assert forced.exit_code == 1 and "error" in forced.output  # compared, and it fails


@pytest.mark.parametrize(("edit", "key"), [
    (lambda d: d.update(tolerance="abc"), "tolerance"),
    (lambda d: d.update(layers="x"), "layers"),
    (lambda d: d["layers"].__setitem__(0, 5), "layers[0]"),
    (lambda d: d["layers"][0].update(channels="6"), "layers[0].channels"),
    (lambda d: d["layers"][1].pop("order"), "layers[1].order"),
    (lambda d: d["layers"][0].update(name=3), "layers[0].name"),
    (lambda d: d.update(output={"sha256": 7}), "output.sha256"),
], ids=["tolerance-str", "layers-str", "layer-int", "channels-str", "order-missing",
        "name-int", "sha-int"])
def test_malformed_report_is_a_clean_error(run: dict[str, Path], tmp_path: Path, edit: object,
                                           key: str) -> None:
    doc = yaml.safe_load(run["report"].read_text())
    edit(doc)  # type: ignore[operator]
    bad = tmp_path / "bad.report.yaml"
    bad.write_text(yaml.safe_dump(doc))
    result = lcd("verify", run["out"], "-r", run["src"], "--report", bad)
    assert result.exit_code == 2, result.output
    assert f"key '{key}'" in " ".join(result.output.split())


def test_lcd_config_must_be_a_json_object(run: dict[str, Path], tmp_path: Path) -> None:
    tensors = load_file(str(run["out"]))
    meta = open_checkpoint(run["out"]).metadata | {"lcd_config": "[1, 2]"}
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad), metadata=meta)
    result = lcd("verify", bad, "-r", run["src"])
    assert result.exit_code == 2 and "must be a JSON object" in " ".join(result.output.split())


def test_record_writes_the_outcome_into_the_report(run: dict[str, Path], tmp_path: Path) -> None:
    rep = tmp_path / "copy.report.yaml"
    rep.write_text(run["report"].read_text())
    result = lcd("verify", run["out"], "-r", run["src"], "--report", rep, "--record", "--json")
    doc = json.loads(result.stdout)
    section = yaml.safe_load(rep.read_text())["verify"]
    assert section["passed"] == doc["passed"] and section["tol"] == 0.3
    assert [r["name"] for r in section["layers"]] == [FILTER.format(i) for i in (0, 1)]
    assert [r["worst"] for r in section["layers"]] == [r["worst"] for r in doc["layers"]]
    none = lcd("verify", run["out"], "-r", run["src"], "--no-report", "--record")
    assert none.exit_code == 2


# ---------------------------------------------------------------- the report's additions


def test_report_has_worst_channels_resources_phases_and_files(run: dict[str, Path]) -> None:
    rep = yaml.safe_load(run["report"].read_text())
    assert rep["output"]["files"] == [str(run["out"])] and rep["report"]["path"] == str(run["report"])
    assert rep["resources"]["peak_rss_mb"] > 0
    assert set(rep["phases"]) == {"materialize_fit_score", "hash_source", "write"}
    with open_checkpoint(run["src"]) as ckpt, open_checkpoint(run["out"]) as out:
        (_, layers), = select_configs(ckpt)
        for layer, row in zip(layers, rep["layers"], strict=True):
            h = materialize(ckpt, layer)[0].numpy()  # (C, L) float64
            p = out.get(f"{layer.prefix}.ssm.poles", torch.float64).numpy()  # (C, N, 2)
            r = out.get(f"{layer.prefix}.ssm.residues", torch.float64).numpy()  # (C, N, 2)
            h_hat = naive_modal(p[..., 0] + 1j * p[..., 1], r[..., 0] + 1j * r[..., 1], h.shape[1])
            rel = np.linalg.norm(h - h_hat, axis=1) / np.linalg.norm(h, axis=1)  # (C,)
            want = np.argsort(-rel, kind="stable")[:5]
            assert [w["channel"] for w in row["worst_channels"]] == want.tolist()
            np.testing.assert_allclose([w["rel_l2"] for w in row["worst_channels"]], rel[want],
                                       rtol=1e-9)
            assert "rel_l2_channels" not in row


@pytest.mark.parametrize("channels,length", [(3, 63), (2, 1000)], ids=["C3-L63", "C2-L1000"])
def test_kernel_errors_per_channel_against_naive(channels: int, length: int) -> None:
    g = torch.Generator().manual_seed(channels)
    h = torch.randn(channels, length, generator=g, dtype=torch.float64)
    poles = 0.9 * torch.exp(1j * torch.rand(channels, 2, generator=g, dtype=torch.float64))
    residues = torch.randn(channels, 2, generator=g, dtype=torch.complex128)
    stats = kernel_errors(h, poles, residues, order=2)
    h_hat = naive_modal(poles.numpy(), residues.numpy(), length)
    rel = np.linalg.norm(h.numpy() - h_hat, axis=1) / np.linalg.norm(h.numpy(), axis=1)
    np.testing.assert_allclose(stats["rel_l2_channels"], rel, rtol=1e-10)
    assert stats["rel_l2"]["max"] == max(stats["rel_l2_channels"])
    two = two_sided_errors(h, h.flip(1), (poles, residues), (poles, residues), order=2)
    both = np.concatenate([h.numpy(), h.flip(1).numpy()], 1)
    rel2 = np.linalg.norm(both - np.concatenate([h_hat, h_hat], 1), axis=1) / np.linalg.norm(
        both, axis=1)
    np.testing.assert_allclose(two["rel_l2_channels"], rel2, rtol=1e-10)


# ---------------------------------------------------------------- options


def _options() -> dict[str, list[tuple[str, str]]]:
    """command -> [(short, long)] of every option with a short name."""
    group = typer.main.get_command(app)
    found: dict[str, list[tuple[str, str]]] = {"(global)": []}
    commands = {"(global)": group, **group.commands}  # type: ignore[attr-defined]
    for name, cmd in commands.items():
        found[name] = [(s, next(o for o in p.opts if o.startswith("--")))
                       for p in cmd.params if getattr(p, "opts", None)
                       for s in p.opts if re.fullmatch(r"-[A-Za-z]", s)]
    return found


# One meaning per short option; -L is the kernel length L (a list of them on bench).
SAME_MEANING = {"--length": "L", "--lengths": "L"}


def test_each_short_option_has_one_meaning() -> None:
    meaning: dict[str, set[str]] = {}
    for pairs in _options().values():
        for short, long in pairs:
            meaning.setdefault(short, set()).add(SAME_MEANING.get(long, long))
    assert {s: m for s, m in meaning.items() if len(m) > 1} == {}
    assert meaning["-T"] == {"--input-length"} and meaning["-c"] == {"--channels"}
    assert meaning["-o"] == {"--output"} and {"-q", "-v"} <= set(meaning)


def test_json_is_a_flag_everywhere() -> None:
    group = typer.main.get_command(app)
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        for p in cmd.params:
            if "--json" in getattr(p, "opts", []):
                assert p.is_flag, f"lcd {name} --json takes a value"  # type: ignore[attr-defined]


def test_families_json_and_aliases(write_ckpt) -> None:
    result = lcd("families", "--json")
    rows = json.loads(result.stdout)
    by_name = {r["name"]: r for r in rows}
    assert "hyenadna" in by_name["hyenadna-hf"]["aliases"]
    assert all(t in by_name for target in FAMILY_ALIASES.values() for t in target.split(","))
    table = lcd("families")
    assert "hyenadna-hf" in table.stdout and "hyenadna" in table.stdout  # the table is stdout
    src = write_ckpt(make_example("hyenadna", **TINY), name="hy.safetensors")
    doc = json.loads(lcd("inspect", src, "--family", "hyenadna", "--no-analysis", "--json").stdout)
    assert doc["families"] == ["hyenadna-hf"]
    bad = lcd("inspect", src, "--family", "hyenadnaa")
    assert bad.exit_code == 2 and "unknown family 'hyenadnaa'" in bad.output


def test_every_alias_is_an_example() -> None:
    assert set(FAMILY_ALIASES) <= set(EXAMPLES)


def test_inspect_keys_json_goes_to_stdout(write_ckpt) -> None:
    src = write_ckpt(make_example("hyenadna", **TINY), name="hy.safetensors")
    result = lcd("inspect", src, "--keys", "--json", "--no-analysis")
    doc = json.loads(result.stdout)
    with open_checkpoint(src) as ckpt:
        assert [k["name"] for k in doc["keys"]] == ckpt.keys()
    assert "filter_fn.implicit_filter" not in result.stderr


@pytest.mark.parametrize("channels", ["0", "-3"])
def test_inspect_channels_must_be_positive(write_ckpt, channels: str) -> None:
    src = write_ckpt(make_example("hyenadna", **TINY), name="hy.safetensors")
    result = lcd("inspect", src, "--channels", channels)
    assert result.exit_code == 2 and "must be at least 1" in result.output


# ---------------------------------------------------------------- tables and help


def _numbers(text: str) -> set[str]:
    return set(re.findall(r"\d\.\d\de[+-]\d\d", text))


def test_tables_fit_80_columns_and_keep_every_number(run: dict[str, Path],
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    result = lcd("distill", run["src"], "--order", "2", "-o", run["root"] / "narrow.safetensors",
                 "--device", "cpu", "--force")
    assert result.exit_code == 0, result.output
    rep = yaml.safe_load((run["root"] / "narrow.report.yaml").read_text())
    want = {f"{s[k]:.2e}" for s in rep["layers"] for k in ("hinf_rel", "floor")}
    want |= {f"{s['rel_l2'][k]:.2e}" for s in rep["layers"] for k in ("median", "max")}
    table = result.stderr
    assert want <= _numbers(table), want - _numbers(table)
    assert "…" not in table and all(len(ln) <= 80 for ln in table.splitlines() if "│" in ln)
    assert all(FILTER.format(i) in " ".join(table.split()) for i in (0, 1))  # the legend
    doc = json.loads(lcd("inspect", run["src"], "--json").stdout)
    table = lcd("inspect", run["src"]).stderr
    floors = {f"{v:.2e}" for la in doc["layers"] for v in la["compressibility"]["floor_median"].values()
              if v is not None}
    assert floors <= _numbers(table) and "…" not in table
    assert all(len(ln) <= 80 for ln in table.splitlines() if "│" in ln)


@pytest.mark.parametrize("command", ["inspect", "distill", "verify", "bench", "example",
                                     "families"])
def test_help_has_no_bool_metavar_and_keeps_brackets(command: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")
    result = CliRunner().invoke(app, [command, "--help"])
    text = result.output
    assert result.exit_code == 0 and "Usage: lcd" in text and "--help" in text
    assert "<bool>" not in text
    if command == "distill":
        assert "[real, imag]" in text
    if command == "bench":
        assert "[16; --quick 8]" in text and "[1024,8192,65536; --quick 1024,4096]" in text


def test_ci_doc_installs_from_source() -> None:
    doc = (Path(__file__).resolve().parents[1] / "docs" / "ci.md").read_text()
    assert "pip install lcd-cli" not in doc and "--input-length" in doc
