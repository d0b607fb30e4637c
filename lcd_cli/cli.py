"""The `lcd` command line: parse, validate, call one function, print.

Human output and progress go to stderr; ``--json`` output goes to stdout. Bad input exits 2
with a one-paragraph message (a traceback only with ``lcd --debug``); a failed check exits 1.
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from lcd_cli import __version__
from lcd_cli.bench import parse_lengths, plot_bench, require_matplotlib, run_bench, settings_for
from lcd_cli.engines import stripedhyena as stripedhyena_engine
from lcd_cli.errors import LcdError
from lcd_cli.examples import make_example, write_example
from lcd_cli.families.config import builtin_configs
from lcd_cli.families.model_config import describe
from lcd_cli.io.checkpoint import open_checkpoint
from lcd_cli.io.signals import run_terminable
from lcd_cli.numerics.compressibility import FLOOR_ORDERS
from lcd_cli.pipeline.distill import run_distill
from lcd_cli.pipeline.inspect import inspect_checkpoint
from lcd_cli.pipeline.plan import plan_distill
from lcd_cli.pipeline.verify import verify_checkpoint

app = typer.Typer(
    name="lcd",
    help="Distil long-convolution layers (Hyena, StripedHyena, explicit long convs) into "
    "diagonal state space models, with measured error.\n\n"
    "Typical flow: `lcd inspect model.safetensors`, then `lcd distill model.safetensors "
    "--order 16`, then `lcd verify model.lcd.safetensors --reference model.safetensors`.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
ENGINES = {"stripedhyena": stripedhyena_engine}  # `lcd verify --engine NAME`
err = Console(stderr=True)
if not err.is_terminal:
    err.width = max(err.width, 160)  # logs and CI: don't squeeze tables to 80 columns

FamilyOpt = Annotated[str | None, typer.Option(
    "--family", "-f", help="Family config name (see `lcd families`); several comma-separated. "
    "Default: detect from the keys.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Your own family config YAML (schema: docs/config-schema.md).")]
LengthOpt = Annotated[int | None, typer.Option(
    "--length", "-L", help="Kernel length to use (truncates a stored kernel; required for modal "
    "layers whose config gives none).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Kernel option NAME=VALUE (repeatable; VALUE a YAML scalar, e.g. --set "
    "decay=fixed): beats the model's config, tensor evidence and the defaults.")]
ModelConfigOpt = Annotated[Path | None, typer.Option(
    "--model-config", help="The model's config.json or training config (YAML/JSON) to read "
    "kernel options from (default: config.json beside the checkpoint).")]


def _print_version(value: bool) -> None:
    """Eager `--version`: runs while parsing, so `lcd --version` needs no command."""
    if value:
        print(__version__)
        raise typer.Exit(0)


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_print_version,
        is_eager=True)] = False,
) -> None:
    ctx.obj = {"debug": debug}


@contextmanager
def _errors(ctx: typer.Context) -> Iterator[None]:
    """Turn LcdError into a one-paragraph message and its exit code."""
    try:
        yield
    except LcdError as e:
        if ctx.obj and ctx.obj.get("debug"):
            raise
        err.print(f"[bold red]error:[/] {escape(e.message)}", highlight=False, soft_wrap=True)
        raise typer.Exit(e.exit_code) from None


def _device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise LcdError("--device cuda was asked for but torch sees no CUDA device",
                       hint="use --device cpu, or install a CUDA build of torch")
    if name not in ("cpu", "cuda"):
        raise LcdError(f"unknown device '{name}'", hint="choose auto, cpu or cuda")
    return name


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.2e}"


@app.command()
def families() -> None:
    """List the built-in family configs."""
    table = Table(title="Built-in family configs")
    for col in ("name", "family", "materializer", "description"):
        table.add_column(col)
    for cfg in builtin_configs():
        table.add_row(cfg.name, cfg.family, cfg.materializer, cfg.description)
    err.print(table)


@app.command()
def inspect(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(
        help="A .safetensors file, a *.safetensors.index.json, or a folder holding one.")],
    family: FamilyOpt = None,
    config: ConfigOpt = None,
    length: LengthOpt = None,
    channels: Annotated[int, typer.Option(
        help="Channels sampled per layer for the compressibility analysis.")] = 16,
    analysis: Annotated[bool, typer.Option(
        "--analysis/--no-analysis", help="Materialize kernels and analyse compressibility "
        "(--no-analysis reads headers only).")] = True,
    keys: Annotated[bool, typer.Option("--keys", help="Also list every tensor key.")] = False,
    sets: SetOpt = None,
    model_config: ModelConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find the long-conv layers and show how compressible each kernel is.

    For each layer: channels, kernel length, dtype, generator size, and from the Hankel
    singular values of the kernel the order needed for a relative l2 error of 1e-2 / 1e-3
    and the lower bound (Eckart-Young floor) at orders 8/16/32/64.
    """
    with _errors(ctx), open_checkpoint(checkpoint) as ckpt:
        if keys:
            for info in ckpt.tensors.values():
                err.print(f"{info.name}  {info.dtype}  {list(info.shape)}", highlight=False)
        result = inspect_checkpoint(ckpt, family=family, config=config, length=length,
                                    channels=channels, analyse=analysis, sets=sets,
                                    model_config=model_config)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    table = Table(title=f"{checkpoint} — {len(result['layers'])} long-conv layer(s), "
                  f"{result['tensors']} tensors, family {', '.join(result['families'])}")
    for col in ("layer", "family", "C", "L", "dtype", "gen. params"):
        table.add_column(col, justify="right" if col in ("C", "L", "gen. params") else "left")
    if analysis:
        table.add_column("N@1e-2", justify="right")
        table.add_column("N@1e-3", justify="right")
        for n in FLOOR_ORDERS:
            table.add_column(f"floor@{n}", justify="right")
    notes = set()
    for row in result["layers"]:
        cells = [row["name"], row["family"], str(row["channels"]), str(row["length"]),
                 row["dtype"], f"{row['generator_params']:,}"]
        comp = row.get("compressibility")
        if comp:
            cap = f">{comp['max_order_searched']}"
            cells += [str(comp["order_for"][t]) if comp["order_for"][t] else cap
                      for t in ("0.01", "0.001")]
            cells += [_fmt(comp["floor_median"][str(n)]) for n in FLOOR_ORDERS]
            notes.add(f"{comp['channels_sampled']} channel(s) sampled per layer, Hankel SVD "
                      f"{comp['svd']}")
        elif analysis:
            cells += ["skip"] * (2 + len(FLOOR_ORDERS))
        table.add_row(*cells)
    err.print(table)
    for row in result["layers"]:  # each option's value and where it came from
        line = describe(row["options"], row["option_sources"])
        err.print(f"{row['name'] or '(file)'} options: {line}", highlight=False, markup=False,
                  soft_wrap=True)
    for row in result["layers"]:  # facts about the source generator (e.g. SSM state, cond(V))
        if row.get("generator_info"):
            facts = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in row["generator_info"].items())
            err.print(f"{row['name']}: {facts}", highlight=False, soft_wrap=True)
    if analysis:
        err.print("N@eps: smallest order whose lower bound is <= eps on every sampled channel; "
                  "floor@N: median lower bound on the relative l2 error at order N. These are "
                  "lower bounds: they ignore stability (|p| < 1), which costs most on kernels "
                  "that do not decay within L, so a stable fit can need a higher order. "
                  + "; ".join(sorted(notes)), highlight=False)


@app.command()
def distill(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(help="Input checkpoint (file, index or folder).")],
    order: Annotated[int | None, typer.Option(
        "--order", "-n", help="Modes per channel (N complex poles, 2N real state numbers).")] = None,
    tol: Annotated[float | None, typer.Option(
        "--tol", help="Instead of --order: the smallest order per layer whose worst channel "
        "relative l2 error is <= TOL (up to --max-order).")] = None,
    max_order: Annotated[int, typer.Option(help="Largest order tried with --tol.")] = 64,
    family: FamilyOpt = None,
    config: ConfigOpt = None,
    length: LengthOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output checkpoint (default <stem>.lcd.safetensors beside a single "
        "file; for a model folder or a sharded checkpoint a new folder, <folder>-lcd beside it).")
    ] = None,
    report: Annotated[Path | None, typer.Option(
        help="YAML report (default: inside an output folder, lcd.report.yaml; beside an output "
        "file, named after it: <output stem>.report.yaml).")] = None,
    layout: Annotated[str, typer.Option(
        help="Output layout: how the fitted SSMs are stored (lcd: <layer>.ssm.poles / "
        ".ssm.residues). See docs/architecture.md.")] = "lcd",
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option(help="Seed of the fitter's randomness.")] = 0,
    force: Annotated[bool, typer.Option(help="Overwrite existing outputs.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan (layers, options and their sources, keys removed and "
        "added) and stop; reads headers (and small tensors that decide options) only.")] = False,
    sets: SetOpt = None,
    model_config: ModelConfigOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit a diagonal SSM to every long-conv layer and write a new checkpoint plus a report.

    Tensors other than the kernel generators are copied bit for bit; each layer gets
    <layer>.ssm.poles and <layer>.ssm.residues (float32, (C, N, 2) [real, imag]).
    """
    with _errors(ctx), open_checkpoint(checkpoint) as ckpt:
        dev = None if dry_run else _device(device)
        plan = plan_distill(ckpt, order=order, tol=tol, max_order=max_order, family=family,
                            config=config, length=length, output=output, report=report,
                            force=force, layout=layout, device=dev, seed=seed,
                            argument=checkpoint, sets=sets, model_config=model_config)
        if dry_run:
            desc = plan.describe()
            if as_json:
                print(json.dumps(desc, indent=2))
            else:
                err.print(f"[bold]plan[/] {desc['source']} -> {desc['output']} "
                          f"(report {desc['report']})")
                for la in desc["layers"]:
                    err.print(f"  {la['name']}  ({la['family']}) C={la['channels']} "
                              f"L={la['length']}  remove {', '.join(la['remove']) or '-'}; add "
                              f"{', '.join(la['add']) or '-'}", highlight=False, markup=False)
                    line = describe(la["options"], la["option_sources"])
                    err.print(f"    options: {line}", highlight=False, markup=False,
                              soft_wrap=True)
                if "shared" in desc:
                    err.print(f"  shared by all layers: remove {', '.join(desc['shared']['remove'])}"
                              f" (if stored); add {', '.join(desc['shared']['add'])}",
                              highlight=False, markup=False)
                for s in desc["skipped"]:
                    err.print(f"  {s['name']}  skipped: {s['reason']}", highlight=False)
            return
        progress = Progress(TextColumn("{task.description}"), BarColumn(),
                            TextColumn("{task.completed}/{task.total} layers"),
                            TimeElapsedColumn(), console=err)

        def on_layer(res: Any) -> None:
            s = res.stats
            progress.console.print(
                f"  {s['name']}: N={s['order']} rel_l2 median {s['rel_l2']['median']:.2e} "
                f"max {s['rel_l2']['max']:.2e} (floor {s['floor']:.2e}) {s['seconds']:.1f}s",
                highlight=False)
            if s.get("tol_met") is False:
                progress.console.print(
                    f"  warning: {s['name']} misses --tol {plan.tol:g} at --max-order "
                    f"{plan.max_order} (worst channel {s['rel_l2']['max']:.2e}); the order-"
                    f"{s['order']} fit is written. Raise --max-order, or check the outputs with "
                    "lcd verify.", style="yellow", highlight=False)
            progress.advance(task)

        with progress:
            task = progress.add_task(f"distilling on {dev}", total=len(plan.layers))
            result = run_distill(plan, ckpt, force=force,
                                 command=shlex.join(["lcd", *sys.argv[1:]]), on_layer=on_layer)
    if result.get("written_by", 0) != result.get("rank", 0):
        return  # torchrun: another rank writes the output and prints the summary
    if as_json:
        print(json.dumps(result, indent=2))
        return
    _distill_summary(result)


def _distill_summary(result: dict[str, Any]) -> None:
    table = Table(title="lcd distill")
    for col in ("layer", "N", "rel_l2 median", "rel_l2 max", "hinf_rel", "floor", "|p| max", "s"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for s in result["layers"]:
        table.add_row(s["name"], str(s["order"]), _fmt(s["rel_l2"]["median"]),
                      _fmt(s["rel_l2"]["max"]), _fmt(s["hinf_rel"]), _fmt(s["floor"]),
                      f"{s['max_pole_abs']:.6f}", f"{s['seconds']:.1f}")
    err.print(table)
    err.print(f"wrote {result['output']['path']} and the report; "
              f"{result['totals']['layers']} layer(s) in {result['totals']['seconds']:.1f}s",
              highlight=False)


@app.command()
def verify(
    ctx: typer.Context,
    distilled: Annotated[Path, typer.Argument(help="Checkpoint written by `lcd distill`.")],
    reference: Annotated[Path, typer.Option(
        "--reference", "-r", help="The original checkpoint it was distilled from.")],
    tol: Annotated[float | None, typer.Option(
        help="Largest relative output error allowed (default: the report's, else 1e-2).")] = None,
    report: Annotated[Path | None, typer.Option(
        help="The distill report (default: next to the distilled checkpoint).")] = None,
    length: Annotated[int | None, typer.Option(
        "--length", "-T", help="Input length (default: the kernel length; longer inputs also "
        "check that the recurrence stays bounded).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the test inputs.")] = 0,
    channels: Annotated[int | None, typer.Option(
        help="Check only this many channels per layer (evenly spaced).")] = None,
    engine: Annotated[str | None, typer.Option(
        help="Also run both models in a real engine and compare their logits (parallel and "
        "recurrent): stripedhyena. Needs model folders (config.json + weights).")] = None,
    engine_tol: Annotated[float | None, typer.Option(
        help="Largest logits relative error allowed with --engine [1e-2].")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the recurrent SSM against the original convolution; exit 1 if any layer fails.

    Each layer is driven with seeded white noise, a smooth input and a step, through three
    paths (token by token, prefill then steps, chunked scan); the worst relative output error
    must be <= TOL, every pole inside the unit circle, and nothing NaN/Inf. Exit codes:
    0 pass, 1 a layer failed, 2 bad input.
    """
    with _errors(ctx):
        result = verify_checkpoint(distilled, reference, tol=tol, report=report, length=length,
                                   seed=seed, channels=channels)
        if engine is not None:
            result["engine"] = engine_check(engine, distilled, reference, engine_tol, seed)
            result["passed"] = result["passed"] and result["engine"]["passed"]
    if as_json:
        print(json.dumps(result, indent=2))
    else:
        _verify_summary(result)
    if not result["passed"]:
        raise typer.Exit(1)


def engine_check(engine: str, distilled: Path, reference: Path, tol: float | None,
                 seed: int) -> dict[str, Any]:
    """Model-level check in a real engine: logits of the distilled model against the original."""
    if engine not in ENGINES:
        raise LcdError(f"unknown engine '{engine}'", key="engine",
                       hint=f"choose one of {', '.join(ENGINES)}")
    module = ENGINES[engine]
    limit = module.DEFAULT_TOL if tol is None else tol
    folder = [p if p.is_dir() else p.parent for p in (reference, distilled)]
    comp = module.compare_logits(folder[0], folder[1], seed=seed)
    worst = max(comp["parallel"]["rel_err"], comp["recurrent"]["rel_err"])
    return {**comp, "engine": engine, "tol": limit, "worst": worst, "passed": worst <= limit}


def _verify_summary(result: dict[str, Any]) -> None:
    table = Table(title=f"lcd verify (tol {result['tol']:.1e}, T={result['length']})")
    for col in ("layer", "worst", "|p| max", "finite", "beyond L", "status"):
        table.add_column(col, justify="left" if col in ("layer", "status") else "right")
    for row in result["layers"]:
        beyond = row.get("beyond_length")
        table.add_row(row["name"], _fmt(row["worst"]), f"{row['max_pole_abs']:.6f}",
                      str(row["finite"]), _fmt(beyond["deviation"]) if beyond else "-",
                      "[green]ok[/]" if row["passed"] else f"[red]FAIL[/] {row['reason']}")
    err.print(table)
    if "engine" in result:
        e = result["engine"]
        err.print(f"engine {e['engine']}: logits rel err parallel {e['parallel']['rel_err']:.2e} "
                  f"(top-1 {e['parallel']['top1']:.1%}), recurrent "
                  f"{e['recurrent']['rel_err']:.2e} (top-1 {e['recurrent']['top1']:.1%}); "
                  f"tol {e['tol']:.1e}: {'ok' if e['passed'] else 'FAIL'}", highlight=False)
    verdict = "[green]passed[/]" if result["passed"] else "[red]failed[/]"
    err.print(f"{verdict}: {sum(r['passed'] for r in result['layers'])}/{len(result['layers'])} "
              "layer(s) within tolerance")


@app.command()
def example(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help=(
        "hyenadna, stripedhyena, long-conv, evo2 (SE/MR/LI + attention), m2, long-conv-bidir, "
        "tnn, tnn-bidir, s4d, s4-diag, s4-dplr, h3, stu or stu-approx."))],
    output: Annotated[Path, typer.Option("--output", "-o", help="File (or folder with --shards).")],
    seed: Annotated[int, typer.Option(help="Seed of the weights.")] = 0,
    dtype: Annotated[str, typer.Option(help="fp32, fp16, bf16 or fp64.")] = "fp32",
    shards: Annotated[int, typer.Option(help="Write this many shards plus an index.")] = 1,
    force: Annotated[bool, typer.Option(help="Overwrite an existing output.")] = False,
) -> None:
    """Write a small example checkpoint in a family's real key layout (deterministic)."""
    with _errors(ctx):
        tensors = make_example(name, seed=seed, dtype=dtype)
        files = write_example(tensors, output, shards=shards, force=force,
                              metadata={"lcd_example": name, "lcd_seed": str(seed)})
    err.print(f"wrote {', '.join(str(f) for f in files)} ({len(tensors)} tensors)",
              highlight=False)


@app.command()
def bench(
    ctx: typer.Context,
    device: Annotated[str, typer.Option(help="auto, cpu or cuda.")] = "auto",
    channels: Annotated[int | None, typer.Option(
        "--channels", "-c", help="Channels C of the decoded layer [256; --quick 64].")] = None,
    order: Annotated[int | None, typer.Option(
        "--order", "-n", help="Modes per channel N [16; --quick 8].")] = None,
    lengths: Annotated[str | None, typer.Option(
        "--lengths", "-L", help="Comma-separated kernel/context lengths "
        "[1024,8192,65536; --quick 1024,4096].")] = None,
    tokens: Annotated[int | None, typer.Option(
        "--tokens", "-T", help="Tokens decoded per timed run (at most L/2) [64; --quick 16].")] = None,
    batch: Annotated[int | None, typer.Option(
        "--batch", "-B", help="Sequences decoded together [1].")] = None,
    repeats: Annotated[int | None, typer.Option(
        help="Timed runs per measurement, after warm-up [5; --quick 3].")] = None,
    fit_channels: Annotated[int | None, typer.Option(
        help="Channels actually fitted per length (their modes are tiled to C for decoding) "
        "[32; --quick 4].")] = None,
    json_out: Annotated[str | None, typer.Option(
        "--json", help="Write the result as JSON to PATH ('-' for stdout).")] = None,
    plot: Annotated[Path | None, typer.Option(
        help="Write a PNG of latency per token vs length (needs matplotlib).")] = None,
    threads: Annotated[int | None, typer.Option(
        help="torch CPU threads during the bench (default: torch's; use 1 on a busy shared "
        "CPU, where multi-threaded small ops stall).")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="Small sizes (well under a minute on a laptop CPU).")] = False,
    seed: Annotated[int, typer.Option(help="Seed of the kernels and inputs.")] = 0,
) -> None:
    """Time fitting, per-token decoding (recurrent step vs FFT vs cached direct convolution)
    and prefill of one layer at several lengths.

    Kernels are synthetic damped oscillations plus noise; the decoded layer is the distilled
    SSM in float32. Medians over --repeats timed runs after warm-up; spreads in --json.
    """
    with _errors(ctx):
        if plot is not None:
            require_matplotlib()
        opts = settings_for(quick, channels=channels, order=order, tokens=tokens, batch=batch,
                            repeats=repeats, fit_channels=fit_channels,
                            lengths=None if lengths is None else parse_lengths(lengths))
        dev = _device(device)
        with err.status("lcd bench") as status:
            result = run_bench(device=dev, quick=quick, seed=seed, threads=threads,
                               progress=lambda msg: status.update(f"lcd bench: {msg}"), **opts)
        if json_out == "-":
            print(json.dumps(result, indent=2))
        elif json_out:
            try:
                Path(json_out).write_text(json.dumps(result, indent=2) + "\n")
            except OSError as e:
                raise LcdError(f"cannot write the JSON: {e.strerror}", file=json_out) from None
        if plot is not None:
            plot_bench(result, plot)
    _bench_summary(result)


def _bench_summary(result: dict[str, Any]) -> None:
    s, env = result["settings"], result["environment"]
    table = Table(title=f"lcd bench on {env['device_name']} ({s['device']}): C={s['channels']}, "
                  f"N={s['order']}, B={s['batch']}, float32; ms per token, median of "
                  f"{s['repeats']} runs")
    for col in ("L", "recurrent", "FFT", "direct", "FFT/rec", "direct/rec", "prefill ms",
                "rec GB/s", "fit ch/s", "fit rel_l2"):
        table.add_column(col, justify="right")
    fits = {row["length"]: row for row in result["fit"]}
    for row in result["decode"]:
        fit = fits[row["length"]]
        table.add_row(str(row["length"]), f"{row['recurrent_ms_per_token']:.4f}",
                      f"{row['fft_ms_per_token']:.3f}", f"{row['direct_ms_per_token']:.3f}",
                      f"{row['fft_over_recurrent']:,.0f}x", f"{row['direct_over_recurrent']:,.0f}x",
                      f"{row['prefill_ms']:.2f}", f"{row['recurrent_gbps']:.2f}",
                      f"{fit['channels_per_s']:.2f}", _fmt(fit["rel_l2_median"]))
    err.print(table)
    mem = ", ".join(f"{r['peak_mem_mb']:.0f}" for r in result["fit"])
    fft_n = ", ".join(str(r["tokens_timed"]["fft"]) for r in result["decode"])
    dir_n = ", ".join(str(r["tokens_timed"]["direct"]) for r in result["decode"])
    err.print(f"fit: {s['fit_channels']} channel(s) per length, {s['fit_repeats']} timed run(s); "
              f"peak memory {mem} MB ({s['peak_mem_method']}). Tokens per timed run: recurrent "
              f"{s['tokens']} (at most L/2), FFT {fft_n}, direct {dir_n}.", highlight=False)


def run() -> None:
    """The `lcd` entry point: SIGTERM and SIGHUP handled like Ctrl-C (temporaries removed, a
    one-line message, exit 143 / 129 / 130)."""
    run_terminable(lambda: app(prog_name="lcd"), prog="lcd")
