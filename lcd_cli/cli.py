"""The `lcd` command line: parse, validate, call one function, print.

A command's result goes to stdout: ``--json`` documents, the `lcd families` table. Human
tables, progress and messages go to stderr. Bad input exits 2 with a one-paragraph message (a
traceback only with ``lcd --debug``); a failed check exits 1.

Progress (`lcd distill`, `lcd bench`): a rich bar on a terminal, plain timestamped lines
elsewhere (CI, nohup, SLURM) with a heartbeat at least every 10 s; ``-q`` keeps warnings
only, ``-v`` adds every step. `lcd distill` also logs every message to ``<report stem>.log``.

Short options have one meaning on every command:
    -f --family  family config or example name     -o --output   the file a command writes
    -n --order   modes per channel N                -r --reference  the original checkpoint
    -L --length(s) kernel length L (bench: a list)  -T --input-length  input length T (verify)
    -c --channels  channels sampled per layer       -B --batch    sequences decoded together
    -q --quiet / -v --verbose (before the command)
"""

from __future__ import annotations

import json
import os
import shlex
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
import typer.core
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, TextColumn, TimeElapsedColumn
from rich.progress import Progress as RichProgress
from rich.table import Table

from lcd_cli import __version__
from lcd_cli.bench import parse_lengths, plot_bench, require_matplotlib, run_bench, settings_for
from lcd_cli.engines import stripedhyena as stripedhyena_engine
from lcd_cli.engines import vortex as vortex_engine
from lcd_cli.errors import LcdError
from lcd_cli.examples import make_example, write_example
from lcd_cli.families.config import builtin_configs
from lcd_cli.families.model_config import describe
from lcd_cli.io.checkpoint import open_checkpoint
from lcd_cli.io.signals import run_terminable
from lcd_cli.numerics.allocator import keep_freed_memory
from lcd_cli.numerics.compressibility import FLOOR_ORDERS
from lcd_cli.pipeline import progress as progress_events
from lcd_cli.pipeline.aliases import aliases_of, resolve_family
from lcd_cli.pipeline.convert import convert as convert_checkpoint
from lcd_cli.pipeline.convert import parse_size
from lcd_cli.pipeline.distill import run_distill
from lcd_cli.pipeline.inspect import inspect_checkpoint
from lcd_cli.pipeline.plan import plan_distill
from lcd_cli.pipeline.plots import DistillPlotter, plot_inspect, plots_available
from lcd_cli.pipeline.progress import NORMAL, QUIET, VERBOSE, Progress, line_sink, open_log
from lcd_cli.pipeline.verify import record_verify, verify_checkpoint, verify_section

WIDE_LOG = 160  # columns for tables outside a terminal (logs, CI) when COLUMNS is not set


def _plain_help(cmd: Any) -> None:
    if cmd.help:
        cmd.help = escape(cmd.help)
    for p in cmd.params:
        _plain_param(p)


def _plain_param(p: Any) -> None:
    """(typer may vendor its own click: duck-typed.)"""
    if getattr(p, "is_flag", False) and p.metavar is None:
        p.metavar = ""  # typer would show <bool>
    if getattr(p, "help", None):
        p.help = escape(p.help)


class _PlainHelp:
    """Help without ``<bool>`` after flags, and with brackets (``[real, imag]``) kept verbatim
    (mixed into typer's command and group classes)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _plain_help(self)

    def get_help_option(self, ctx: Any) -> Any:
        opt = super().get_help_option(ctx)  # type: ignore[misc]
        if opt is not None and opt.metavar is None:
            opt.metavar = ""
        return opt


class _Command(_PlainHelp, typer.core.TyperCommand):
    pass


class _Group(_PlainHelp, typer.core.TyperGroup):
    pass


app = typer.Typer(
    name="lcd",
    cls=_Group,
    help="Distil long-convolution layers (Hyena, StripedHyena, explicit long convs) into "
    "diagonal state space models, with measured error.\n\n"
    "Typical flow: `lcd inspect model.safetensors`, then `lcd distill model.safetensors "
    "--order 16`, then `lcd verify model.lcd.safetensors --reference model.safetensors`.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
command = app.command  # every command below uses _Command
ENGINES = {"stripedhyena": stripedhyena_engine, "vortex": vortex_engine}  # `lcd verify --engine NAME`
err = Console(stderr=True)
out = Console()


def _size_consoles() -> None:
    """COLUMNS wins; else a terminal's own width; else WIDE_LOG (logs: tables stay whole)."""
    cols = os.environ.get("COLUMNS", "")
    for con in (err, out):
        if cols.isdigit() and int(cols) > 0:
            con.width = int(cols)
        elif not con.is_terminal:
            con.width = max(con.width, WIDE_LOG)


_size_consoles()

FamilyOpt = Annotated[str | None, typer.Option(
    "--family", "-f", help="Family config name or example name (see `lcd families`); several "
    "comma-separated. Default: detect from the keys.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    "--config", help="Your own family config YAML (schema: docs/config-schema.md).")]
LengthOpt = Annotated[int | None, typer.Option(
    "--length", "-L", help="Kernel length L to use (truncates a stored kernel; required for "
    "modal layers whose config gives none).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
SetOpt = Annotated[list[str] | None, typer.Option(
    "--set", help="Kernel option NAME=VALUE (repeatable; VALUE a YAML scalar, e.g. --set "
    "decay=fixed): beats the model's config, tensor evidence and the defaults.")]
ModelConfigOpt = Annotated[Path | None, typer.Option(
    "--model-config", help="The model's config.json or training config (YAML/JSON) to read "
    "kernel options from (default: config.json beside the checkpoint).")]
PlotOpt = Annotated[Path | None, typer.Option(
    "--plot", help="Write PNG plots into this folder (needs matplotlib: pip install .[plot]).")]


def _print_version(value: bool) -> None:
    """Eager `--version`: runs while parsing, so `lcd --version` needs no command."""
    if value:
        print(__version__)
        raise typer.Exit(0)


@app.callback()
def main(
    ctx: typer.Context,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks on errors.")] = False,
    quiet: Annotated[bool, typer.Option(
        "--quiet", "-q", help="Print results and warnings only (no progress).")] = False,
    verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Print every step (which layer is fitted, each phase).")] = False,
    version: Annotated[bool, typer.Option(
        "--version", help="Print the version and exit.", callback=_print_version,
        is_eager=True)] = False,
) -> None:
    _size_consoles()
    keep_freed_memory()  # large temporaries reused, not remapped (numerics/allocator.py)
    level = QUIET if quiet else VERBOSE if verbose else NORMAL
    ctx.obj = {"debug": debug, "level": level}


def _level(ctx: typer.Context) -> int:
    obj = ctx.find_root().obj or {}
    return int(obj.get("level", NORMAL))


@contextmanager
def _errors(ctx: typer.Context) -> Iterator[None]:
    """Turn LcdError into a one-paragraph message and its exit code."""
    try:
        yield
    except LcdError as e:
        if (ctx.find_root().obj or {}).get("debug"):
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


def _check_channels(channels: int | None) -> None:
    if channels is not None and channels < 1:
        raise LcdError(f"--channels {channels} must be at least 1 (channels sampled per layer)",
                       key="--channels")


# ---------------------------------------------------------------- tables that fit the console


def _table(title: str | None, headers: list[str], rows: list[list[str]], left: set[int]) -> Table:
    table = Table(title=title, title_justify="left")
    for i, h in enumerate(headers):
        table.add_column(h, justify="left" if i in left else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    return table


UNBOUNDED = 100_000  # columns offered when measuring a table's natural width


def _width_of(console: Console, table: Table) -> int:
    """The width the table needs to show every cell unwrapped (rich clamps to the console's)."""
    return console.measure(table, options=console.options.update(width=UNBOUNDED)).maximum


def print_table(console: Console, title: str, headers: list[str], rows: list[list[str]], *,
                left: set[int] | None = None, names: int | None = 0,
                legend: str = "layer") -> None:
    """Print a table that fits the console; nothing is ever cut.

    Too wide: column ``names`` (long names) becomes #1, #2, ... with a legend below; still too
    wide: the other columns are split over several tables, each repeating the first column.
    Cells never wrap, so every number is printed in full.
    """
    left = {0} if left is None else left
    width = console.width
    table = _table(title, headers, rows, left)
    if _width_of(console, table) <= width:
        console.print(table)
        return
    legend_rows: list[str] = []
    if names is not None:
        legend_rows = [f"#{i + 1} = {row[names]}" for i, row in enumerate(rows)]
        rows = [[f"#{i + 1}" if j == names else c for j, c in enumerate(row)]
                for i, row in enumerate(rows)]
        headers = ["#" if j == names else h for j, h in enumerate(headers)]
    table = _table(title, headers, rows, left)
    if _width_of(console, table) <= width:
        console.print(table)
    else:  # split the columns; the first one (name / #) opens every part
        parts: list[list[int]] = []
        current: list[int] = [0]
        for j in range(1, len(headers)):
            trial = _table(None, [headers[k] for k in [*current, j]],
                           [[r[k] for k in [*current, j]] for r in rows], left)
            if len(current) > 1 and _width_of(console, trial) > width:
                parts.append(current)
                current = [0]
            current.append(j)
        parts.append(current)
        for n, cols in enumerate(parts):
            console.print(_table(f"{title} ({n + 1}/{len(parts)})" if title else None,
                                 [headers[k] for k in cols], [[r[k] for k in cols] for r in rows],
                                 {i for i, k in enumerate(cols) if k in left}))
    for line in legend_rows:  # one per line: a long name wraps, never cut
        console.print(line, highlight=False, markup=False)


# ---------------------------------------------------------------- commands


@command(cls=_Command)
def families(as_json: JsonOpt = False) -> None:
    """List the built-in family configs and the example names that stand for them."""
    rows = [{"name": c.name, "family": c.family, "materializer": c.materializer,
             "aliases": aliases_of(c.name), "description": c.description}
            for c in builtin_configs()]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    table = Table(title="Built-in family configs (use the name or an alias with --family)",
                  title_justify="left")
    for col in ("name", "aliases", "family", "materializer", "description"):
        table.add_column(col, no_wrap=col != "description", overflow="fold")
    for r in rows:
        table.add_row(r["name"], ", ".join(r["aliases"]) or "-", r["family"], r["materializer"],
                      r["description"])
    out.print(table)


@command(cls=_Command)
def inspect(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(
        metavar="CHECKPOINT",
        help="A .safetensors file, a *.safetensors.index.json, or a folder holding one.")],
    family: FamilyOpt = None,
    config: ConfigOpt = None,
    length: LengthOpt = None,
    channels: Annotated[int, typer.Option(
        "--channels", "-c", help="Channels sampled per layer for the compressibility "
        "analysis.")] = 16,
    analysis: Annotated[bool, typer.Option(
        "--analysis/--no-analysis", help="Materialize kernels and analyse compressibility "
        "(--no-analysis reads headers only).")] = True,
    keys: Annotated[bool, typer.Option(
        "--keys", help="Also list every tensor key (in the JSON under 'keys' with --json).")] = False,
    sets: SetOpt = None,
    model_config: ModelConfigOpt = None,
    plot: PlotOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Find the long-conv layers and show how compressible each kernel is.

    For each layer: channels, kernel length, dtype, generator size, and from the Hankel
    singular values of the kernel the order needed for a relative l2 error of 1e-2 / 1e-3
    and the lower bound (Eckart-Young floor) at orders 8/16/32/64.
    """
    with _errors(ctx), open_checkpoint(checkpoint) as ckpt:
        _check_channels(channels)
        if plot is not None:
            plots_available()
        key_rows = [{"name": i.name, "dtype": i.dtype, "shape": list(i.shape)}
                    for i in ckpt.tensors.values()] if keys else None
        result = inspect_checkpoint(ckpt, family=resolve_family(family), config=config,
                                    length=length, channels=channels, analyse=analysis,
                                    sets=sets, model_config=model_config)
        if key_rows is not None:
            result["keys"] = key_rows
        if plot is not None:
            result["plots"] = [str(p) for p in plot_inspect(
                ckpt, plot, family=resolve_family(family), config=config, length=length,
                channels=channels)]
    if as_json:
        print(json.dumps(result, indent=2))
        return
    for k in key_rows or []:
        err.print(f"{k['name']}  {k['dtype']}  {k['shape']}", highlight=False, markup=False)
    headers = ["layer", "family", "C", "L", "dtype", "gen. params"]
    if analysis:
        headers += ["N@1e-2", "N@1e-3"] + [f"floor@{n}" for n in FLOOR_ORDERS]
    rows, notes = [], set()
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
        rows.append(cells)
    print_table(err, f"{checkpoint} — {len(result['layers'])} long-conv layer(s), "
                f"{result['tensors']} tensors, family {', '.join(result['families'])}",
                headers, rows, left={0, 1, 4})
    for row in result["layers"]:  # each option's value and where it came from
        line = describe(row["options"], row["option_sources"])
        err.print(f"{row['name'] or '(file)'} options: {line}", highlight=False, markup=False,
                  soft_wrap=True)
    for row in result["layers"]:  # facts about the source generator (e.g. SSM state, cond(V))
        if row.get("generator_info"):
            facts = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}"
                              for k, v in row["generator_info"].items())
            err.print(f"{row['name']}: {facts}", highlight=False, soft_wrap=True, markup=False)
    if analysis:
        err.print("N@eps: smallest order whose lower bound is <= eps on every sampled channel; "
                  "floor@N: median lower bound on the relative l2 error at order N. These are "
                  "lower bounds: they ignore stability (|p| < 1), which costs most on kernels "
                  "that do not decay within L, so a stable fit can need a higher order. "
                  + "; ".join(sorted(notes)), highlight=False, markup=False)
    for p in result.get("plots", []):
        err.print(f"plot: {p}", highlight=False, markup=False)


def _rich_listener(bar: RichProgress, task: Any, progress: Progress) -> Callable[..., None]:
    """Keep a rich bar in step with the pipeline's events (on a terminal)."""

    def listen(name: str, fields: dict[str, Any]) -> None:
        if name == "start":
            bar.update(task, total=fields["layers"])
        elif name == "layer":
            bar.advance(task)
        bar.update(task, description=progress.now)

    return listen


@command(cls=_Command)
def distill(
    ctx: typer.Context,
    checkpoint: Annotated[Path, typer.Argument(
        metavar="CHECKPOINT", help="Input checkpoint (file, index or folder).")],
    order: Annotated[int | None, typer.Option(
        "--order", "-n", help="Modes per channel (N complex poles, 2N real state numbers).")] = None,
    tol: Annotated[float | None, typer.Option(
        "--tol", help="Instead of --order: the smallest order per layer whose worst channel "
        "relative l2 error is <= TOL (up to --max-order; found by bisection, up to "
        "1 + log2(--max-order) fits per layer).")] = None,
    max_order: Annotated[int, typer.Option("--max-order", help="Largest order tried with --tol.")] = 64,
    family: FamilyOpt = None,
    config: ConfigOpt = None,
    length: LengthOpt = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Output checkpoint (default <stem>.lcd.safetensors beside a single "
        "file; for a model folder or a sharded checkpoint a new folder, <folder>-lcd beside it).")
    ] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="YAML report (default: inside an output folder, lcd.report.yaml; beside "
        "an output file, named after it: <output stem>.report.yaml). The log goes beside it "
        "(<report stem>.log; for a folder, <folder>.log).")] = None,
    layout: Annotated[str, typer.Option(
        "--layout", help="Output layout: how the fitted SSMs are stored (lcd: <layer>.ssm.poles "
        "/ .ssm.residues; stripedhyena and vortex: the engines' own keys, docs/engines.md). See "
        "docs/architecture.md.")] = "lcd",
    poles: Annotated[str | None, typer.Option(
        "--poles", help="Pole class of the fit: complex (conjugate-pair modes, the default) or "
        "real (poles on (0, 1) with real residues; what --layout vortex stores, and its "
        "default there).")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    seed: Annotated[int, typer.Option("--seed", help="Seed of the fitter's randomness.")] = 0,
    workers: Annotated[int | None, typer.Option(
        "--workers", help="CPU worker processes (one torch thread each) sharing each layer's "
        "channels; the output is bit-identical to one process. Default: one per core on the "
        "CPU (a layer of at most 64 channels fits in-process); 1: in-process.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite existing outputs.")] = False,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan (layers, options and their sources, keys removed and "
        "added) and stop; reads headers (and small tensors that decide options) only.")] = False,
    sets: SetOpt = None,
    model_config: ModelConfigOpt = None,
    plot: PlotOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Fit a diagonal SSM to every long-conv layer and write a new checkpoint plus a report.

    Tensors other than the kernel generators are copied bit for bit; each layer gets
    <layer>.ssm.poles and <layer>.ssm.residues (float32, (C, N, 2) [real, imag]).
    The report and the log follow the output: -o other.safetensors writes other.report.yaml
    and other.report.log.
    """
    level = _level(ctx)
    with _errors(ctx), open_checkpoint(checkpoint) as ckpt:
        dev = None if dry_run else _device(device)
        if plot is not None:
            plots_available()
        plan = plan_distill(ckpt, order=order, tol=tol, max_order=max_order,
                            family=resolve_family(family), config=config, length=length,
                            output=output, report=report, force=force, layout=layout, device=dev,
                            seed=seed, argument=checkpoint, sets=sets, model_config=model_config,
                            workers=workers, poles=poles)
        if dry_run:
            _print_plan(plan.describe(), as_json)
            return
        with ExitStack() as stack:
            log = stack.enter_context(open_log(plan.log_path))
            sinks = [line_sink(log, VERBOSE)]
            on_terminal = err.is_terminal and level > QUIET
            if not on_terminal:
                sinks.append(line_sink(sys.stderr, level))
            progress = Progress(sinks, heartbeat_s=None if on_terminal
                                else progress_events.HEARTBEAT_S)
            if on_terminal:  # a bar, and the layer lines above it
                bar = RichProgress(TextColumn("{task.description}"), BarColumn(),
                                   TextColumn("{task.completed}/{task.total} layers"),
                                   TimeElapsedColumn(), console=err)
                stack.enter_context(bar)
                task = bar.add_task(f"distilling on {dev}", total=len(plan.layers))
                progress.listeners.append(_rich_listener(bar, task, progress))
                progress.sinks.append(lambda lvl, msg: bar.console.print(
                    msg, highlight=False, markup=False) if lvl <= min(level, NORMAL) else None)
            stack.enter_context(progress)

            plotter = DistillPlotter(ckpt, plan, plot) if plot is not None else None

            def on_layer(res: Any) -> None:
                s = res.stats
                if s.get("tol_met") is False:
                    progress.warn(
                        f"{s['name']} misses --tol {plan.tol:g} at --max-order {plan.max_order} "
                        f"(worst channel {s['rel_l2']['max']:.2e}); the order-{s['order']} fit "
                        "is written. Raise --max-order, or check the outputs with lcd verify.")
                if plotter is not None:
                    plotter(res)

            result = run_distill(plan, ckpt, force=force, progress=progress,
                                 command=shlex.join(["lcd", *sys.argv[1:]]), on_layer=on_layer)
            result["log"] = str(plan.log_path)
            if plotter is not None:
                result["plots"] = [str(p) for p in plotter.written]
    if result.get("written_by", 0) != result.get("rank", 0):
        return  # torchrun: another rank writes the output and prints the summary
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if level > QUIET:
        _distill_summary(result)


def _print_plan(desc: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(desc, indent=2))
        return
    err.print(f"plan {desc['source']} -> {desc['output']} (report {desc['report']})",
              highlight=False, markup=False)
    for la in desc["layers"]:
        err.print(f"  {la['name']}  ({la['family']}) C={la['channels']} "
                  f"L={la['length']}  remove {', '.join(la['remove']) or '-'}; add "
                  f"{', '.join(la['add']) or '-'}", highlight=False, markup=False)
        err.print(f"    options: {describe(la['options'], la['option_sources'])}",
                  highlight=False, markup=False, soft_wrap=True)
    if "shared" in desc:
        err.print(f"  shared by all layers: remove {', '.join(desc['shared']['remove'])}"
                  f" (if stored); add {', '.join(desc['shared']['add'])}",
                  highlight=False, markup=False)
    for s in desc["skipped"]:
        err.print(f"  {s['name']}  skipped: {s['reason']}", highlight=False, markup=False)


def _distill_summary(result: dict[str, Any]) -> None:
    headers = ["layer", "N", "rel_l2 median", "rel_l2 max", "hinf_rel", "floor", "|p| max", "s"]
    rows = [[s["name"], str(s["order"]), _fmt(s["rel_l2"]["median"]), _fmt(s["rel_l2"]["max"]),
             _fmt(s["hinf_rel"]), _fmt(s["floor"]), f"{s['max_pole_abs']:.6f}",
             f"{s['seconds']:.1f}"] for s in result["layers"]]
    print_table(err, "lcd distill", headers, rows)
    worst = [f"{s['name']} ch {', '.join(str(w['channel']) for w in s['worst_channels'][:3])}"
             for s in result["layers"] if s.get("worst_channels")]
    if worst:
        err.print("worst channels: " + "; ".join(worst), highlight=False, markup=False)
    err.print(f"wrote {result['output']['path']}, the report {result['report']['path']} and the "
              f"log {result['log']}; {result['totals']['layers']} layer(s) in "
              f"{result['totals']['seconds']:.1f}s, peak memory "
              f"{result['resources']['peak_rss_mb']:.0f} MiB", highlight=False, markup=False)


@command(cls=_Command)
def verify(
    ctx: typer.Context,
    distilled: Annotated[Path, typer.Argument(
        metavar="DISTILLED", help="Checkpoint written by `lcd distill`.")],
    reference: Annotated[Path, typer.Option(
        "--reference", "-r", help="The original checkpoint it was distilled from (checked "
        "against the recorded source sha256).")],
    tol: Annotated[float | None, typer.Option(
        "--tol", help="Largest relative output error allowed (default: the report's, else "
        "1e-2).")] = None,
    report: Annotated[Path | None, typer.Option(
        "--report", help="The distill report (default: <distilled stem>.report.yaml beside "
        "it); it must record this checkpoint's sha256.")] = None,
    no_report: Annotated[bool, typer.Option(
        "--no-report", help="Ignore any report (tolerance from --tol, else 1e-2).")] = False,
    input_length: Annotated[int | None, typer.Option(
        "--input-length", "-T", help="Input length T (default: the kernel length; longer "
        "inputs also check that the recurrence stays bounded).")] = None,
    old_length: Annotated[int | None, typer.Option(
        "--length", hidden=True, help="Old name of --input-length.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the test inputs.")] = 0,
    channels: Annotated[int | None, typer.Option(
        "--channels", "-c", help="Check only this many channels per layer (evenly spaced).")] = None,
    no_check_source: Annotated[bool, typer.Option(
        "--no-check-source", help="Do not require --reference to be the recorded source.")] = False,
    no_check_report: Annotated[bool, typer.Option(
        "--no-check-report", help="Use the report even if it records another checkpoint's "
        "sha256.")] = False,
    record: Annotated[bool, typer.Option(
        "--record", help="Write the outcome into the report's 'verify:' section.")] = False,
    engine: Annotated[str | None, typer.Option(
        "--engine", help="Also run both models in a real engine and compare their logits "
        "(parallel and recurrent): stripedhyena, or vortex (Evo 2). Needs model folders "
        "(the engine's config.json / config.yml + weights).")
    ] = None,
    engine_tol: Annotated[float | None, typer.Option(
        "--engine-tol", help="Largest logits relative error allowed with --engine [1e-2].")
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Run the recurrent SSM against the original convolution; exit 1 if any layer fails.

    Each layer is driven with seeded white noise, a smooth input and a step, through three
    paths (token by token, prefill then steps, chunked scan); the worst relative output error
    must be <= TOL, every pole inside the unit circle, and nothing NaN/Inf. The stored float32
    parameters are also run as engines run them (complex64 recurrence and exp(t log p) kernel;
    column "float32"), which must be <= TOL too. Before that, the
    report must be this checkpoint's and --reference its source (by sha256). Exit codes:
    0 pass, 1 a layer failed, 2 bad input.
    """
    with _errors(ctx):
        if old_length is not None:
            if input_length is not None:
                raise LcdError("give --input-length only (--length is its old name)")
            err.print("note: `lcd verify --length` is now --input-length (-T)", highlight=False)
            input_length = old_length
        _check_channels(channels)
        result = verify_checkpoint(distilled, reference, tol=tol, report=report,
                                   length=input_length, seed=seed, channels=channels,
                                   use_report=not no_report, check_report=not no_check_report,
                                   check_source=not no_check_source, require_report=record)
        if engine is not None:
            result["engine"] = engine_check(engine, distilled, reference, engine_tol, seed)
            result["passed"] = result["passed"] and result["engine"]["passed"]
        if record:
            record_verify(Path(result["report"]),
                          verify_section(result, shlex.join(["lcd", *sys.argv[1:]])))
    if as_json:
        print(json.dumps(result, indent=2))
    elif _level(ctx) > QUIET or not result["passed"]:
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
    headers = ["layer", "worst", "float32", "|p| max", "finite", "beyond L", "status"]
    rows = []
    for row in result["layers"]:
        beyond = row.get("beyond_length")
        f32 = row.get("worst_f32")
        rows.append([row["name"], _fmt(row["worst"]), "-" if f32 is None else _fmt(f32),
                     f"{row['max_pole_abs']:.6f}",
                     str(row["finite"]), _fmt(beyond["deviation"]) if beyond else "-",
                     "ok" if row["passed"] else "FAIL"])
    print_table(err, f"lcd verify (tol {result['tol']:.1e} from {result['tol_source']}, "
                f"T={result['length']})", headers, rows, left={0, 6})
    for row in result["layers"]:
        if not row["passed"]:
            err.print(f"FAIL {row['name']}: {row['reason']}", style="red", highlight=False,
                      markup=False, soft_wrap=True)
    if "engine" in result:
        e = result["engine"]
        err.print(f"engine {e['engine']}: logits rel err parallel {e['parallel']['rel_err']:.2e} "
                  f"(top-1 {e['parallel']['top1']:.1%}), recurrent "
                  f"{e['recurrent']['rel_err']:.2e} (top-1 {e['recurrent']['top1']:.1%}); "
                  f"tol {e['tol']:.1e}: {'ok' if e['passed'] else 'FAIL'}", highlight=False)
    verdict = "[green]passed[/]" if result["passed"] else "[red]failed[/]"
    err.print(f"{verdict}: {sum(r['passed'] for r in result['layers'])}/{len(result['layers'])} "
              "layer(s) within tolerance" + (f"; report {escape(result['report'])}"
                                             if result.get("report") else ""), highlight=False)


@command(cls=_Command)
def example(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(metavar="NAME", help=(
        "hyenadna, stripedhyena, long-conv, evo2 (SE/MR/LI + attention), m2, long-conv-bidir, "
        "tnn, tnn-bidir, s4d, s4-diag, s4-dplr, h3, stu or stu-approx."))],
    output: Annotated[Path, typer.Option("--output", "-o", help="File (or folder with --shards).")],
    seed: Annotated[int, typer.Option("--seed", help="Seed of the weights.")] = 0,
    dtype: Annotated[str, typer.Option("--dtype", help="fp32, fp16, bf16 or fp64.")] = "fp32",
    shards: Annotated[int, typer.Option("--shards", help="Write this many shards plus an index.")] = 1,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing output.")] = False,
) -> None:
    """Write a small example checkpoint in a family's real key layout (deterministic)."""
    with _errors(ctx):
        tensors = make_example(name, seed=seed, dtype=dtype)
        files = write_example(tensors, output, shards=shards, force=force,
                              metadata={"lcd_example": name, "lcd_seed": str(seed)})
    if _level(ctx) > QUIET:
        err.print(f"wrote {', '.join(str(f) for f in files)} ({len(tensors)} tensors)",
                  highlight=False, markup=False)


@command(cls=_Command)
def convert(
    ctx: typer.Context,
    sources: Annotated[list[Path], typer.Argument(
        metavar="MODEL.pt", help="A .pt file; a split checkpoint's first part "
        "(NAME.pt.part0), its stem (NAME.pt) or every part; or several .pt state dicts.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="The model folder to write.")],
    config: Annotated[Path | None, typer.Option(
        "--model-config", "--config", help="The model's config to copy into the folder (e.g. "
        "the engine's YAML, evo2-7b-8k.yml); default: config.json, config.yaml or NAME.yml / "
        "NAME.yaml beside the input. (--config: the same; elsewhere --config is a family "
        "config.)")] = None,
    max_shard_size: Annotated[str, typer.Option(
        "--max-shard-size", help="Largest shard: bytes or a size with a unit (5GB = 5e9 bytes, "
        "500MiB); above it the folder holds model-0000i-of-0000n.safetensors and "
        "model.safetensors.index.json.")] = "5GB",
    force: Annotated[bool, typer.Option("--force", help="Replace an existing FOLDER.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Convert torch .pt checkpoints (e.g. Evo 2's) into a safetensors model folder.

    Safe: files are read with torch.load(weights_only=True, mmap=True, map_location="cpu"),
    which builds tensors only and never runs code from the file; anything else (a custom
    class, nested dicts, non-tensor values) is refused with an error naming every offending
    key. A wrapper {"model": {...}} or {"state_dict": {...}} is unwrapped when unambiguous.
    Transformer Engine _extra_state entries (fp8 scaling state) are dropped and listed.

    Split checkpoints (NAME.pt.part0, part1, ...) are byte pieces of one file, as upstream
    (evo2) joins them: they are joined in order into a temporary file inside the output's
    temporary folder, removed at the end; missing parts are listed. Tied tensors (shared
    storage, e.g. a tied unembedding) are each written as their own tensor, and the tie
    recorded.

    Output, written as one unit (nothing partial on an error or Ctrl-C; an existing FOLDER
    only with --force): model.safetensors or shards plus an index, dtypes and bytes
    unchanged; the config; lcd.convert.yaml (sources with sha256, dropped keys, ties,
    shards). Several whole .pt files are read one at a time as parts of one state dict.
    Memory: tensors are memory-mapped and copied one at a time, so no copy of the model is
    held (about the largest tensor at most). Then: `lcd inspect FOLDER`, `lcd distill FOLDER`.
    """
    level = _level(ctx)
    with _errors(ctx):
        limit = parse_size(max_shard_size)
        result = convert_checkpoint(
            sources, output, config=config, max_shard_size=limit, force=force,
            command=shlex.join(["lcd", *sys.argv[1:]]),
            on_step=(lambda msg: err.print(msg, highlight=False, markup=False))
            if level >= VERBOSE else None)
    if as_json:
        print(json.dumps(result, indent=2))
        return
    if level > QUIET:
        _convert_summary(result)


def _convert_summary(result: dict[str, Any]) -> None:
    t = result["tensors"]
    dtypes = ", ".join(f"{n} {d}" for d, n in t["dtypes"].items())
    shards = result["shards"]
    err.print(f"wrote {result['output']}: {t['count']} tensors ({dtypes}), {t['bytes']:,} bytes "
              f"in {len(shards)} shard(s)" + (f" + {result['index']}" if result["index"] else "")
              + (f"; config {', '.join(result['configs'])}" if result["configs"] else ""),
              highlight=False, markup=False, soft_wrap=True)
    if result["split"]:
        err.print(f"split checkpoint: {result['split']['parts']} part(s)"
                  + (" joined in order (byte pieces of one .pt file, as upstream joins them)"
                     if result["split"]["joined"] else ", each a whole state dict, loaded one "
                     "by one"),
                  highlight=False, markup=False)
    if result["wrapper"]:
        w = result["wrapper"]
        err.print(f"the state dict was nested under '{w['key']}'; ignored beside it: "
                  f"{', '.join(w['ignored']) or '-'}", highlight=False, markup=False,
                  soft_wrap=True)
    d = result["dropped"]
    if d["count"]:
        more = f" and {d['count'] - len(result['dropped_examples'])} more" \
            if d["count"] > len(result["dropped_examples"]) else ""
        err.print(f"dropped {d['count']} _extra_state entr{'y' if d['count'] == 1 else 'ies'} "
                  f"(Transformer Engine fp8 state): {', '.join(result['dropped_examples'])}"
                  f"{more}", highlight=False, markup=False, soft_wrap=True)
    for g in result["tied"]:
        err.print(f"tied (shared storage): {', '.join(g['names'])}; each name written as its own tensor",
                  highlight=False, markup=False, soft_wrap=True)
    for note in result["notes"]:
        err.print(f"note: {note}", highlight=False, markup=False, soft_wrap=True)
    err.print(f"record: {result['record']}", highlight=False, markup=False)


@command(cls=_Command)
def bench(
    ctx: typer.Context,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    width: Annotated[int | None, typer.Option(
        "--width", help="Channels C of the decoded layer [256; --quick 64].")] = None,
    old_channels: Annotated[int | None, typer.Option(
        "--channels", hidden=True, help="Old name of --width.")] = None,
    order: Annotated[int | None, typer.Option(
        "--order", "-n", help="Modes per channel N [16; --quick 8].")] = None,
    lengths: Annotated[str | None, typer.Option(
        "--lengths", "-L", help="Comma-separated kernel (and context) lengths L "
        "[1024,8192,65536; --quick 1024,4096].")] = None,
    tokens: Annotated[int | None, typer.Option(
        "--tokens", help="Tokens decoded per timed run (at most L/2) [64; --quick 16].")] = None,
    batch: Annotated[int | None, typer.Option(
        "--batch", "-B", help="Sequences decoded together [1].")] = None,
    repeats: Annotated[int | None, typer.Option(
        "--repeats", help="Timed runs per measurement, after warm-up [5; --quick 3].")] = None,
    fit_channels: Annotated[int | None, typer.Option(
        "--fit-channels", help="Channels actually fitted per length (their modes are tiled to "
        "C for decoding) [32; --quick 4].")] = None,
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Write the result as JSON to this file.")] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Write a PNG of latency per token vs length to this file (needs "
        "matplotlib).")] = None,
    threads: Annotated[int | None, typer.Option(
        "--threads", help="torch CPU threads during the bench (default: torch's; use 1 on a "
        "busy shared CPU, where multi-threaded small ops stall).")] = None,
    quick: Annotated[bool, typer.Option(
        "--quick", help="Small sizes (well under a minute on a laptop CPU).")] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the kernels and inputs.")] = 0,
    as_json: JsonOpt = False,
) -> None:
    """Time fitting, per-token decoding (recurrent step vs FFT vs cached direct convolution)
    and prefill of one layer at several lengths.

    Kernels are synthetic damped oscillations plus noise; the decoded layer is the distilled
    SSM in float32. Medians over --repeats timed runs after warm-up; spreads in the JSON.
    """
    level = _level(ctx)
    with _errors(ctx):
        if old_channels is not None:
            if width is not None:
                raise LcdError("give --width only (--channels is its old name on bench)")
            err.print("note: `lcd bench --channels` is now --width", highlight=False)
            width = old_channels
        if plot is not None:
            require_matplotlib()
        opts = settings_for(quick, channels=width, order=order, tokens=tokens, batch=batch,
                            repeats=repeats, fit_channels=fit_channels,
                            lengths=None if lengths is None else parse_lengths(lengths))
        dev = _device(device)
        on_terminal = err.is_terminal and level > QUIET
        progress = Progress([] if on_terminal else [line_sink(sys.stderr, level)],
                            heartbeat_s=None if on_terminal else progress_events.HEARTBEAT_S)
        with ExitStack() as stack:
            if on_terminal:
                status = stack.enter_context(err.status("lcd bench"))
                progress.listeners.append(
                    lambda name, fields: status.update(f"lcd bench: {progress.activity}"))
            stack.enter_context(progress)
            result = run_bench(device=dev, quick=quick, seed=seed, threads=threads,
                               progress=lambda msg: progress.event("step", message=msg), **opts)
        if output is not None:
            try:
                output.write_text(json.dumps(result, indent=2) + "\n")
            except OSError as e:
                raise LcdError(f"cannot write the JSON: {e.strerror}", file=output) from None
        if plot is not None:
            plot_bench(result, plot)
    if as_json:
        print(json.dumps(result, indent=2))
    elif level > QUIET:
        _bench_summary(result)


def _bench_summary(result: dict[str, Any]) -> None:
    s, env = result["settings"], result["environment"]
    headers = ["L", "recurrent", "FFT", "direct", "FFT/rec", "direct/rec", "prefill ms",
               "rec GB/s", "fit ch/s", "fit rel_l2"]
    fits = {row["length"]: row for row in result["fit"]}
    rows = []
    for row in result["decode"]:
        fit = fits[row["length"]]
        rows.append([str(row["length"]), f"{row['recurrent_ms_per_token']:.4f}",
                     f"{row['fft_ms_per_token']:.3f}", f"{row['direct_ms_per_token']:.3f}",
                     f"{row['fft_over_recurrent']:,.0f}x", f"{row['direct_over_recurrent']:,.0f}x",
                     f"{row['prefill_ms']:.2f}", f"{row['recurrent_gbps']:.2f}",
                     f"{fit['channels_per_s']:.2f}", _fmt(fit["rel_l2_median"])])
    print_table(err, f"lcd bench on {env['device_name']} ({s['device']}): C={s['channels']}, "
                f"N={s['order']}, B={s['batch']}, float32; ms per token, median of "
                f"{s['repeats']} runs", headers, rows, names=None)
    mem = ", ".join(f"{r['peak_mem_mb']:.0f}" for r in result["fit"])
    fft_n = ", ".join(str(r["tokens_timed"]["fft"]) for r in result["decode"])
    dir_n = ", ".join(str(r["tokens_timed"]["direct"]) for r in result["decode"])
    err.print(f"fit: {s['fit_channels']} channel(s) per length, {s['fit_repeats']} timed run(s); "
              f"peak memory {mem} MB ({s['peak_mem_method']}). Tokens per timed run: recurrent "
              f"{s['tokens']} (at most L/2), FFT {fft_n}, direct {dir_n}.", highlight=False,
              markup=False)


def run() -> None:
    """The `lcd` entry point: SIGTERM and SIGHUP handled like Ctrl-C (temporaries removed, a
    one-line message, exit 143 / 129 / 130)."""
    run_terminable(lambda: app(prog_name="lcd"), prog="lcd")
