"""SIGINT, SIGTERM and SIGHUP stop lcd like Ctrl-C: temporaries removed, previous outputs kept,
one line on stderr, exit 130 / 143 / 129."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lcd_cli.io.signals import Terminated, deferred_signals, handle_termination, run_terminable
from tests.faults import tree_digest

# A slow two-output write under the transaction: prints "writing" once its first temporary has
# data, then writes 4 KiB every 50 ms for argv[3] steps.
CHILD = """
import sys, time
from pathlib import Path
from lcd_cli.io.signals import run_terminable
from lcd_cli.io.transaction import OutputTransaction, Target

out, report, steps = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])

def main():
    txn = OutputTransaction([Target(out, label="checkpoint"), Target(report, label="report")],
                            force=True)
    with txn:
        with txn.path(out).open("wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            print("writing", flush=True)
            for _ in range(steps):
                f.write(b"x" * 4096)
                time.sleep(0.05)
        txn.path(report).write_text("report")
        txn.commit()

run_terminable(main, prog="lcd")
"""
REPO = Path(__file__).resolve().parents[1]


def start(tmp_path: Path, steps: int, ignore_hup: bool = False) -> subprocess.Popen[str]:
    (tmp_path / "m.safetensors").write_bytes(b"previous checkpoint")
    (tmp_path / "m.report.yaml").write_text("previous report")

    def setup() -> None:
        # The child starts from default dispositions, whatever the test run inherited (a shell's
        # background job ignores SIGINT, nohup SIGHUP, and children keep that), then as asked.
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        if ignore_hup:  # as nohup does
            signal.signal(signal.SIGHUP, signal.SIG_IGN)

    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(tmp_path / "m.safetensors"),
                             str(tmp_path / "m.report.yaml"), str(steps)], cwd=REPO, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
                            preexec_fn=setup)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line == "writing\n", (line, proc.stderr.read() if proc.stderr else "")
    return proc


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 129),
                                           (signal.SIGINT, 130)], ids=["SIGTERM", "SIGHUP", "SIGINT"])
def test_signal_mid_write_removes_temps(tmp_path: Path, sig: signal.Signals, code: int) -> None:
    proc = start(tmp_path, steps=1200)  # a minute, if nothing stopped it
    before = tree_digest(tmp_path)
    assert any(".lcd-tmp-" in name for name in before)  # the temporaries exist mid-write
    os.kill(proc.pid, sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert err.splitlines() == [f"lcd: stopped by {sig.name}; unfinished outputs were removed"]
    after = tree_digest(tmp_path)
    assert after == {k: v for k, v in before.items() if ".lcd-tmp-" not in k}
    assert (tmp_path / "m.safetensors").read_bytes() == b"previous checkpoint"


def test_ignored_sighup_stays_ignored(tmp_path: Path) -> None:
    proc = start(tmp_path, steps=20, ignore_hup=True)
    os.kill(proc.pid, signal.SIGHUP)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert (tmp_path / "m.report.yaml").read_text() == "report"
    assert sorted(os.listdir(tmp_path)) == ["m.report.yaml", "m.safetensors"]


def test_terminated_exit_codes() -> None:
    assert [Terminated(s).exit_code for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)] == \
        [130, 143, 129]
    assert not isinstance(Terminated(signal.SIGTERM), Exception)  # `except Exception` lets it by


def test_handle_termination_raises_and_restores() -> None:
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    with pytest.raises(Terminated) as e, handle_termination():
        os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at the next bytecode
        pytest.fail("the signal did not raise")
    assert e.value.signum == signal.SIGTERM
    assert {s: signal.getsignal(s) for s in before} == before


def test_deferred_signal_is_delivered_after_the_block() -> None:
    steps = []
    # Python's own SIGINT handler, also where the test run was started with SIGINT ignored.
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), deferred_signals():
            os.kill(os.getpid(), signal.SIGINT)
            steps.append("finished the critical section")
    finally:
        signal.signal(signal.SIGINT, old)
    assert steps == ["finished the critical section"]


def test_deferred_ignored_signal_stays_ignored() -> None:
    old = signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        with deferred_signals():
            os.kill(os.getpid(), signal.SIGHUP)
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, old)


def test_run_terminable_message(capsys: pytest.CaptureFixture[str]) -> None:
    def main() -> None:
        os.kill(os.getpid(), signal.SIGHUP)
        pytest.fail("the signal did not stop main()")

    old = signal.signal(signal.SIGHUP, signal.SIG_DFL)  # also under nohup, which ignores it
    try:
        with pytest.raises(SystemExit) as e:
            run_terminable(main, prog="lcd")
    finally:
        signal.signal(signal.SIGHUP, old)
    assert e.value.code == 129
    assert capsys.readouterr().err == "lcd: stopped by SIGHUP; unfinished outputs were removed\n"
