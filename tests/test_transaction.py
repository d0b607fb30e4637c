"""OutputTransaction: every output of a command is written and committed together, or not at
all. Each hostile case ends in a clean LcdError naming the path and the reason, leaves no
temporary, and leaves the inputs and any previous output byte-identical (tree digests)."""

from __future__ import annotations

import errno
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from lcd_cli.errors import LcdError
from lcd_cli.io.checkpoint import OutEntry, open_checkpoint, safetensors_size, write_safetensors
from lcd_cli.io.signals import Terminated, handle_termination
from lcd_cli.io.transaction import OutputTransaction, Target, atomic_output
from tests.faults import inject, tree_digest

REPORT = "report: yes\n"


@pytest.fixture
def world(tmp_path: Path, write_ckpt) -> dict[str, Path]:
    """An input checkpoint, a sharded input and a work folder holding previous outputs."""
    g = torch.Generator().manual_seed(1)
    tensors = {f"layer{i}.weight": torch.randn(64, 1000, generator=g) for i in range(4)}  # ~1 MB
    single = write_ckpt(tensors, name="in/model.safetensors")
    index = write_ckpt(tensors, name="sharded", shards=2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.safetensors").write_bytes(b"previous checkpoint")
    (out / "old.report.yaml").write_text("previous report\n")
    (out / "oldshards").mkdir()
    (out / "oldshards" / "a.safetensors").write_bytes(b"previous shard")
    return {"root": tmp_path, "single": single, "index": index, "out": out}


def entries_of(path: Path) -> list[OutEntry]:
    return [OutEntry.copy(i) for i in open_checkpoint(path).tensors.values()]


def write_both(txn: OutputTransaction, ckpt: Path, report: Path, source: Path) -> None:
    write_safetensors(txn.path(ckpt), entries_of(source), {"format": "pt"})
    txn.path(report).write_text(REPORT)


def no_temps(root: Path) -> list[str]:
    return [str(p) for p in root.rglob("*") if ".lcd-tmp-" in p.name or ".lcd-old-" in p.name]


@pytest.fixture
def unchanged(world: dict[str, Path]) -> Iterator[Callable[[], None]]:
    """check() asserts the whole tree (inputs and previous outputs) is as it was, and no
    temporary or old copy is left."""
    before = tree_digest(world["root"])

    def check() -> None:
        assert no_temps(world["root"]) == []
        assert tree_digest(world["root"]) == before

    yield check


def pair(world: dict[str, Path], ckpt: str = "old.safetensors", report: str = "old.report.yaml", *,
         force: bool = True, nbytes: int | None = None) -> tuple[Path, Path, OutputTransaction]:
    """A checkpoint + report transaction over the previous outputs, the single file as input."""
    c, r = world["out"] / ckpt, world["out"] / report
    txn = OutputTransaction([Target(c, label="checkpoint", nbytes=nbytes), Target(r, label="report")],
                            inputs=open_checkpoint(world["single"]).inputs, force=force)
    return c, r, txn


# ----------------------------------------------------------------------------- success


def test_commit_replaces_both_and_leaves_nothing_else(world) -> None:
    c, r, txn = pair(world)
    with txn:
        write_both(txn, c, r, world["single"])
        txn.commit()
    assert c.read_bytes() == world["single"].read_bytes()  # a copy of every tensor, same order
    assert r.read_text() == REPORT
    assert no_temps(world["root"]) == []


def test_new_outputs_in_new_folders(world) -> None:
    c = world["root"] / "new" / "deep" / "m.safetensors"
    r = world["root"] / "new" / "m.report.yaml"
    txn = OutputTransaction([Target(c), Target(r)], inputs=[world["single"]], force=False)
    assert not (world["root"] / "new").exists()  # validating creates nothing
    with txn:
        write_both(txn, c, r, world["single"])
        txn.commit()
    assert c.is_file() and r.read_text() == REPORT and no_temps(world["root"]) == []


def test_folder_target_replaced_whole(world) -> None:
    folder = world["out"] / "oldshards"
    with atomic_output(folder, force=True, directory=True) as tmp:
        (tmp / "b.safetensors").write_bytes(b"new shard")
    assert sorted(p.name for p in folder.iterdir()) == ["b.safetensors"]
    assert no_temps(world["root"]) == []


def test_symlink_target_is_replaced_not_followed(world) -> None:
    pointee = world["out"] / "old.safetensors"
    link = world["out"] / "link.safetensors"
    link.symlink_to(pointee)
    with atomic_output(link, force=True) as tmp:
        tmp.write_bytes(b"new")
    assert not link.is_symlink() and link.read_bytes() == b"new"
    assert pointee.read_bytes() == b"previous checkpoint"


@pytest.mark.parametrize(("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)],
                         ids=["umask-022", "umask-077"])
def test_modes_follow_the_umask(tmp_path: Path, umask: int, file_mode: int, dir_mode: int) -> None:
    old = os.umask(umask)
    try:
        f, d = tmp_path / "made" / "x.safetensors", tmp_path / "made" / "shards"
        txn = OutputTransaction([Target(f), Target(d, "dir")], force=False)
        with txn:
            txn.path(f).write_bytes(b"x")
            (txn.path(d) / "s.safetensors").write_bytes(b"s")
            txn.commit()
    finally:
        os.umask(old)
    modes = {p.name: p.stat().st_mode & 0o777 for p in (f, d, d / "s.safetensors", f.parent)}
    assert modes == {"x.safetensors": file_mode, "shards": dir_mode, "s.safetensors": file_mode,
                     "made": dir_mode}


# ----------------------------------------------------------------------------- refused up front


def test_existing_output_needs_force(world, unchanged) -> None:
    with pytest.raises(LcdError, match=r"already exists.*--force") as e:
        pair(world, force=False)
    assert "old.safetensors" in e.value.message
    unchanged()


@pytest.mark.parametrize("how", ["same-path", "symlink", "hardlink", "dotted-path"])
def test_output_onto_the_input(world, unchanged, how: str) -> None:
    src = world["single"]
    target = {"same-path": src, "dotted-path": src.parent / "." / src.name,
              "symlink": world["out"] / "ln.safetensors",
              "hardlink": world["out"] / "hard.safetensors"}[how]
    if how == "symlink":
        target.symlink_to(src)
    if how == "hardlink":
        os.link(src, target)
    before = tree_digest(world["root"])
    with pytest.raises(LcdError, match="would overwrite the input") as e:
        OutputTransaction([Target(target)], inputs=open_checkpoint(src).inputs, force=True)
    assert str(target) in e.value.message
    assert tree_digest(world["root"]) == before and no_temps(world["root"]) == []


def test_output_inside_a_sharded_input_folder(world, unchanged) -> None:
    ckpt = open_checkpoint(world["index"])
    with pytest.raises(LcdError, match="inside the input folder"):
        OutputTransaction([Target(world["index"].parent / "x.safetensors")], inputs=ckpt.inputs,
                          force=True)
    unchanged()


def test_output_folder_holding_the_input(world, unchanged) -> None:
    ckpt = open_checkpoint(world["index"])
    with pytest.raises(LcdError, match=r"holding the input.*delete the input"):
        OutputTransaction([Target(world["root"], "dir")], inputs=ckpt.inputs, force=True)
    unchanged()


@pytest.mark.parametrize("how", ["same-path", "symlink", "hardlink"])
def test_checkpoint_and_report_the_same(world, unchanged, how: str) -> None:
    c = world["out"] / "old.safetensors"
    r = {"same-path": c, "symlink": world["out"] / "r.lnk", "hardlink": world["out"] / "r.hard"}[how]
    if how == "symlink":
        r.symlink_to(c)
    if how == "hardlink":
        os.link(c, r)
    before = tree_digest(world["root"])
    with pytest.raises(LcdError, match="the report and the checkpoint are the same path"):
        OutputTransaction([Target(c, label="checkpoint"), Target(r, label="report")], force=True)
    assert tree_digest(world["root"]) == before


def test_report_inside_the_output_folder(world, unchanged) -> None:
    folder = world["root"] / "shards-lcd"
    with pytest.raises(LcdError, match="report would lie inside the checkpoint folder"):
        OutputTransaction([Target(folder, "dir", label="checkpoint"),
                           Target(folder / "r.yaml", label="report")], force=True)
    unchanged()


@pytest.mark.parametrize("depth", ["parent", "grandparent"])
def test_parent_is_a_file(world, unchanged, depth: str) -> None:
    blocker = world["out"] / "old.safetensors"
    target = blocker / "x.safetensors" if depth == "parent" else blocker / "sub" / "x.safetensors"
    with pytest.raises(LcdError, match="is a file, not a folder") as e:
        OutputTransaction([Target(target)], force=True)
    assert str(blocker) in e.value.message
    unchanged()


@pytest.mark.parametrize(("existing", "kind", "needle"), [
    ("oldshards", "file", "to be a file, but a folder is there"),
    ("old.report.yaml", "dir", "to be a folder, but a file is there"),
], ids=["folder-where-a-file-goes", "file-where-a-folder-goes"])
def test_wrong_kind_even_with_force(world, unchanged, existing: str, kind: str, needle: str) -> None:
    with pytest.raises(LcdError, match=needle) as e:
        OutputTransaction([Target(world["out"] / existing, kind)], force=True)  # type: ignore[arg-type]
    assert existing in e.value.message
    unchanged()


def test_report_is_a_folder_refused_before_any_write(world, unchanged) -> None:
    with pytest.raises(LcdError, match="report is to be a file, but a folder is there"):
        pair(world, report="oldshards")
    unchanged()


def test_special_file_as_output(world) -> None:
    fifo = world["out"] / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(LcdError, match=r"not a regular file .a FIFO."):
        OutputTransaction([Target(fifo)], force=True)


def test_read_only_folder_refused(world, unchanged, monkeypatch: pytest.MonkeyPatch) -> None:
    # Root passes any permission check, so os.access is made to answer as for a normal user.
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m, **k: False if Path(p) == world["out"] else real(p, m, **k))
    with pytest.raises(LcdError, match="permission denied on the folder") as e:
        pair(world)
    assert str(world["out"]) in e.value.message
    unchanged()


def test_not_enough_space_refused(world, unchanged) -> None:
    free = shutil.disk_usage(world["out"]).free
    with pytest.raises(LcdError, match="not enough free space for the checkpoint") as e:
        pair(world, nbytes=free)
    assert str(world["out"]) in e.value.message
    unchanged()


def test_planned_size_is_exact(world) -> None:
    entries = entries_of(world["single"])
    size = safetensors_size(entries, {"format": "pt"})
    out = world["root"] / "sized.safetensors"
    write_safetensors(out, entries, {"format": "pt"})
    assert out.stat().st_size == size


# ----------------------------------------------------------------------------- faults while writing


@pytest.mark.parametrize(("err", "reason"), [
    (errno.ENOSPC, "the disk is full"), (errno.EDQUOT, "quota"), (errno.EIO, "input/output error"),
    (errno.EFBIG, "too large"),
], ids=["ENOSPC", "EDQUOT", "EIO", "EFBIG"])
def test_fault_while_writing_the_checkpoint(world, unchanged, err: int, reason: str) -> None:
    c, r, txn = pair(world)
    with pytest.raises(LcdError, match=reason) as e, inject("write", err, nth=3, times=None), txn:
        write_both(txn, c, r, world["single"])
        txn.commit()
    assert "checkpoint" in e.value.message and str(c) in e.value.message
    assert e.value.exit_code == 2
    unchanged()


def test_disk_full_while_writing_the_report(world, unchanged) -> None:
    # The checkpoint is complete when the report fails: it must not be left without a report.
    c, r, txn = pair(world)
    with pytest.raises(LcdError, match="cannot write the report: the disk is full") as e, \
            inject("write", errno.ENOSPC, match="old.report.yaml"), txn:
        write_both(txn, c, r, world["single"])
        txn.commit()
    assert str(r) in e.value.message
    unchanged()


@pytest.mark.parametrize(("err", "reason"), [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied")],
                         ids=["EROFS", "EACCES"])
def test_cannot_create_the_report(world, unchanged, err: int, reason: str) -> None:
    c, r, txn = pair(world)
    with pytest.raises(LcdError, match=reason) as e, inject("open", err, match="old.report.yaml"), txn:
        write_both(txn, c, r, world["single"])  # never reached: temporaries come first
        txn.commit()
    assert str(r) in e.value.message
    unchanged()


def test_cannot_create_a_parent_folder(world, unchanged) -> None:
    c = world["out"] / "a" / "b" / "m.safetensors"
    txn = OutputTransaction([Target(c)], force=False)
    with pytest.raises(LcdError, match="permission denied") as e, \
            inject("mkdir", errno.EACCES, nth=2), txn:
        pass
    assert str(world["out"] / "a" / "b") in e.value.message
    unchanged()  # the folder "a" it made first is gone again


@pytest.mark.parametrize("nth", [1, 2, 3, 4], ids=["aside-1", "in-1", "aside-2", "in-2"])
def test_rename_fails_midway_everything_restored(world, unchanged, nth: int) -> None:
    # Commit renames: old checkpoint aside, new one in, old report aside, new one in.
    c, r, txn = pair(world)
    with pytest.raises(LcdError, match=r"cannot put the .* in place") as e, txn:
        write_both(txn, c, r, world["single"])
        with inject("rename", errno.EIO, nth=nth):
            txn.commit()
    assert "nothing was changed" in e.value.message
    unchanged()


def test_fsync_fails_at_commit(world, unchanged) -> None:
    c, r, txn = pair(world)
    with pytest.raises(LcdError, match="to disk: an input/output error"), txn:
        write_both(txn, c, r, world["single"])
        with inject("fsync", errno.EIO):
            txn.commit()
    unchanged()


@pytest.mark.parametrize("exc", [RuntimeError, KeyboardInterrupt, LcdError], ids=lambda e: e.__name__)
def test_any_exception_removes_temps_and_propagates(world, unchanged, exc: type[BaseException]) -> None:
    c, _, txn = pair(world)
    with pytest.raises(exc), txn:
        write_safetensors(txn.path(c), entries_of(world["single"]), {})
        raise exc("boom")
    unchanged()


def test_leaving_without_commit_writes_nothing(world, unchanged) -> None:
    c, r, txn = pair(world)
    with txn:
        write_both(txn, c, r, world["single"])
    unchanged()


def test_signal_during_commit_waits_for_it(world) -> None:
    # SIGTERM arrives between the renames: the commit completes, then Terminated is raised.
    c, r, txn = pair(world)
    with pytest.raises(Terminated) as e, handle_termination(), txn:
        write_both(txn, c, r, world["single"])
        with inject("rename", 0, nth=2, on_call=lambda: os.kill(os.getpid(), signal.SIGTERM)):
            txn.commit()
    assert e.value.exit_code == 143
    assert c.read_bytes() == world["single"].read_bytes() and r.read_text() == REPORT
    assert no_temps(world["root"]) == []


# ----------------------------------------------------------------------------- real file systems


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(size=..., ro=False) -> a private tmpfs (needs CAP_SYS_ADMIN; skipped without)."""
    mounted: list[Path] = []

    def mount(size: str = "1m") -> Path:
        point = tmp_path / f"fs{len(mounted)}"
        point.mkdir()
        run = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                             capture_output=True, text=True)
        if run.returncode:
            pytest.skip(f"cannot mount a tmpfs here ({run.stderr.strip() or run.returncode}); "
                        "the fault-injection tests cover the same paths")
        mounted.append(point)
        return point

    yield mount
    for point in mounted:
        subprocess.run(["umount", "-l", str(point)], check=False)


def test_real_disk_full(world, tmpfs) -> None:
    fs = tmpfs("512k")  # the checkpoint is about 1 MB
    (fs / "old.safetensors").write_bytes(b"previous")
    c, r = fs / "old.safetensors", fs / "r.yaml"
    txn = OutputTransaction([Target(c, label="checkpoint"), Target(r, label="report")],
                            inputs=[world["single"]], force=True)
    with pytest.raises(LcdError, match="cannot write the checkpoint: the disk is full") as e, txn:
        write_both(txn, c, r, world["single"])
        txn.commit()
    assert str(c) in e.value.message
    assert [p.name for p in fs.iterdir()] == ["old.safetensors"] and c.read_bytes() == b"previous"


def test_real_disk_full_planned(world, tmpfs) -> None:
    fs = tmpfs("512k")
    size = safetensors_size(entries_of(world["single"]), {})
    with pytest.raises(LcdError, match="not enough free space"):
        OutputTransaction([Target(fs / "m.safetensors", nbytes=size)], force=False)
    assert list(fs.iterdir()) == []


def test_real_read_only_file_system(world, tmpfs) -> None:
    fs = tmpfs("1m")
    (fs / "old.safetensors").write_bytes(b"previous")
    subprocess.run(["mount", "-o", "remount,ro", str(fs)], check=True)
    with pytest.raises(LcdError, match="read-only") as e:
        OutputTransaction([Target(fs / "old.safetensors")], force=True)
    assert str(fs / "old.safetensors") in e.value.message
    assert (fs / "old.safetensors").read_bytes() == b"previous"
