"""The package's atomic writer: old files survive failures, no temporaries are left."""

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from filterprune._atomic import (
    _HOST,
    atomic_dir,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    move_into_place,
    remove_stale,
    staging_dir,
)


@pytest.fixture
def umask():
    """Set a umask for one test and restore the old one after it."""
    old = os.umask(0o022)
    os.umask(old)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_write_replaces_the_file_and_leaves_nothing_else(tmp_path):
    target = tmp_path / "sub" / "out.json"
    atomic_write_text(target, "old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert [p.name for p in target.parent.iterdir()] == ["out.json"]
    atomic_write_bytes(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"



@pytest.mark.parametrize("how", ["atomic_write", "move_into_place"])
def test_a_pipe_is_written_into_not_replaced(tmp_path, how):
    """``-o /dev/null`` or a FIFO became a regular file (as root: the machine's /dev/null)."""
    import threading

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    got = {}

    def read():
        with open(fifo, "rb") as f:
            got["data"] = f.read()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if how == "atomic_write":
        atomic_write_bytes(fifo, b"report")
    else:
        done = tmp_path / "done"
        done.write_bytes(b"report")
        move_into_place(done, fifo)
        assert not done.exists()
    reader.join(timeout=10)
    assert got["data"] == b"report"
    assert stat.S_ISFIFO(fifo.lstat().st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_a_symlink_stays_a_link_and_its_file_is_replaced(tmp_path):
    (tmp_path / "v1.onnx").write_text("old")
    (tmp_path / "latest.onnx").symlink_to("v1.onnx")
    atomic_write_text(tmp_path / "latest.onnx", "new")
    assert (tmp_path / "latest.onnx").is_symlink()
    assert (tmp_path / "v1.onnx").read_text() == "new"


def test_temporary_is_hidden_beside_the_target_with_the_suffix(tmp_path):
    seen = []

    def write(tmp):
        seen.append(Path(tmp))
        Path(tmp).write_text("x")

    atomic_write(tmp_path / "model.keras", write, suffix=".keras")
    atomic_write(tmp_path / "plain", write)
    assert [p.parent for p in seen] == [tmp_path, tmp_path]
    assert seen[0].name.startswith(".model.keras.") and seen[0].name.endswith(".keras")
    assert seen[1].name.startswith(".plain.") and seen[1].name.endswith(".tmp")


def test_failure_midway_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    target = tmp_path / "state.pt"
    target.write_text("old content")

    def broken(tmp):
        Path(tmp).write_text("half a fi")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]


def test_a_full_disk_names_the_target(tmp_path):
    """The error named no file (a temporary's write failed)."""
    target = tmp_path / "m.onnx"
    target.write_text("old content")

    def full(tmp):
        Path(tmp).write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError, match=rf"^\[Errno {errno.ENOSPC}\] Cannot write {target}: No "
                       "space left on device. Nothing was written there; free some space"):
        atomic_write(target, full)
    assert target.read_text() == "old content"
    assert [p.name for p in tmp_path.iterdir()] == ["m.onnx"]


def test_interrupt_midway_removes_the_temporary(tmp_path):
    def interrupted(tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a.txt", interrupted)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_file_mode_follows_the_umask(tmp_path, umask, mask):
    umask(mask)
    target = tmp_path / "out.txt"
    atomic_write_text(target, "x")
    assert _mode(target) == 0o666 & ~mask


def test_file_mode_is_reset_when_the_writer_makes_a_private_file(tmp_path, umask):
    umask(0o022)

    def private(tmp):
        Path(tmp).write_text("x")
        os.chmod(tmp, 0o600)

    atomic_write(tmp_path / "out.txt", private)
    assert _mode(tmp_path / "out.txt") == 0o644


def test_dir_is_written_whole_with_the_umask_mode(tmp_path, umask):
    umask(0o027)
    target = tmp_path / "saved"

    def write(tmp):
        assert Path(tmp).parent == tmp_path and Path(tmp).name.startswith(".saved.")
        (Path(tmp) / "variables").mkdir()
        (Path(tmp) / "saved_model.pb").write_text("graph")

    atomic_dir(target, write)
    assert sorted(p.name for p in target.iterdir()) == ["saved_model.pb", "variables"]
    assert _mode(target) == 0o750
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]


def test_dir_replaces_an_empty_folder(tmp_path):
    target = tmp_path / "saved"
    target.mkdir()
    atomic_dir(target, lambda tmp: (Path(tmp) / "f").write_text("new"))
    assert (target / "f").read_text() == "new"


def test_dir_refuses_a_folder_with_files_and_leaves_it_untouched(tmp_path):
    target = tmp_path / "saved"
    (target / "keep").mkdir(parents=True)
    (target / "keep" / "notes.txt").write_text("mine")
    calls = []
    with pytest.raises(FileExistsError, match=r"`path` must be a new or empty folder.*not empty"):
        atomic_dir(target, calls.append)
    assert calls == []  # refused before any work
    assert (target / "keep" / "notes.txt").read_text() == "mine"
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]


def test_dir_refuses_a_folder_that_fills_up_while_writing(tmp_path):
    target = tmp_path / "saved"

    def write(tmp):
        (Path(tmp) / "f").write_text("new")
        target.mkdir()
        (target / "other.txt").write_text("someone else's")

    with pytest.raises(FileExistsError, match="not empty"):
        atomic_dir(target, write)
    assert [p.name for p in target.iterdir()] == ["other.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["saved"]  # our temporary is gone


def test_dir_refuses_a_file_at_the_path(tmp_path):
    target = tmp_path / "saved"
    target.write_text("a file")
    with pytest.raises(FileExistsError, match="exists and is not a folder"):
        atomic_dir(target, lambda tmp: None)
    assert target.read_text() == "a file"


def test_dir_failure_removes_the_temporary_folder(tmp_path):
    def broken(tmp):
        (Path(tmp) / "part").write_text("x")
        raise OSError("no space")

    with pytest.raises(OSError, match="no space"):
        atomic_dir(tmp_path / "saved", broken)
    assert list(tmp_path.iterdir()) == []


def test_staging_files_move_into_place_and_the_folder_goes(tmp_path, umask):
    umask(0o022)
    target = tmp_path / "ir" / "model.xml"
    with staging_dir(target) as tmp:
        assert Path(tmp).parent == target.parent and Path(tmp).name.startswith(".model.xml.")
        Path(tmp, "m.bin").write_bytes(b"w")
        os.chmod(Path(tmp, "m.bin"), 0o600)
        Path(tmp, "m.xml").write_text("<net/>")
        move_into_place(Path(tmp, "m.bin"), target.with_suffix(".bin"))
        move_into_place(Path(tmp, "m.xml"), target)
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.bin", "model.xml"]
    assert _mode(target.with_suffix(".bin")) == 0o644


# --- leftovers of killed writers (issue 13, item 9) ---------------------------------------

pytestmark_posix = pytest.mark.skipif(os.name != "posix", reason="process checks are POSIX")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def _killed_writer(tmp_path, call: str) -> None:
    """Run a writer in a child process and kill -9 it while its temporary exists."""
    script = textwrap.dedent(f"""
        import os, sys, time
        from pathlib import Path
        from filterprune._atomic import atomic_write, atomic_dir, staging_dir
        def slow(tmp):
            p = Path(tmp)
            (p / "saved_model.pb" if p.is_dir() else p).write_bytes(b"x" * 1000)
            print("writing", flush=True)
            time.sleep(60)
        {call}
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert proc.stdout.readline().strip() == "writing"
    proc.send_signal(signal.SIGKILL)
    proc.wait()


@pytestmark_posix
@pytest.mark.parametrize(
    ("call", "target", "rewrite"),
    [
        ("atomic_write('m.onnx', slow, suffix='.onnx')", "m.onnx",
         lambda t: atomic_write_text(t, "new")),
        ("atomic_dir('saved', slow)", "saved", lambda t: atomic_dir(t, lambda tmp: None)),
        ("with staging_dir('ir/m.xml') as d: slow(d)", "ir/m.xml",
         lambda t: atomic_write_text(t, "<net/>")),
    ],
    ids=["file", "folder", "staging"],
)
def test_the_next_write_removes_what_a_killed_writer_left(tmp_path, call, target, rewrite):
    _killed_writer(tmp_path, call)
    folder = (tmp_path / target).parent
    left = [p.name for p in folder.iterdir()]
    assert len(left) == 1 and left[0].startswith(f".{Path(target).name}.")  # the defect
    rewrite(tmp_path / target)
    assert [p.name for p in folder.iterdir()] == [Path(target).name]


@pytestmark_posix
def test_only_temporaries_of_dead_processes_of_this_host_are_removed(tmp_path):
    target = tmp_path / "m.onnx"
    dead, alive = _dead_pid(), os.getppid()
    names = {
        f".m.onnx.{dead}-{_HOST}.abcd_123.onnx": False,  # ours, dead: removed
        f".m.onnx.{dead}-{_HOST}.abcd_124.tmp": False,
        f".m.onnx.{alive}-{_HOST}.abcd_125.onnx": True,  # a running writer
        f".m.onnx.{os.getpid()}-{_HOST}.abcd_126.onnx": True,  # this process (a thread)
        f".m.onnx.{dead}-000000.abcd_127.onnx": True,  # another host on a shared folder
        ".m.onnx.abcd_128.onnx": True,  # not a name made here
        f".other.onnx.{dead}-{_HOST}.abcd_129.onnx": True,  # another target
        "notes.txt": True,
    }
    for name in names:
        (tmp_path / name).write_text("x")
    removed = remove_stale(target)
    assert sorted(removed) == sorted(n for n, kept in names.items() if not kept)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(n for n, k in names.items() if k)


@pytestmark_posix
def test_a_long_legal_name_is_written_and_its_killed_temporaries_found(tmp_path):
    """A 231-byte name (255 allowed) failed: "File name too long", the temporary's name
    being some 30 bytes longer."""
    name = "z" * 250 + ".onnx"
    atomic_write_text(tmp_path / name, "x")
    assert (tmp_path / name).read_text() == "x"
    _killed_writer(tmp_path, f"atomic_write({name!r}, slow, suffix='.onnx')")
    assert len(list(tmp_path.iterdir())) == 2
    atomic_write_text(tmp_path / name, "y")
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_temporary_names_carry_the_process_and_host(tmp_path):
    seen = []
    atomic_write(tmp_path / "a.txt", lambda tmp: seen.append(Path(tmp).name))
    assert seen[0].startswith(f".a.txt.{os.getpid()}-{_HOST}.")


@pytest.mark.parametrize("mask", [0o077, 0o002])
def test_folder_and_staged_file_modes_follow_the_umask(tmp_path, umask, mask):
    umask(mask)
    atomic_dir(tmp_path / "saved", lambda tmp: (Path(tmp) / "f").write_text("x"))
    assert _mode(tmp_path / "saved") == 0o777 & ~mask
    with staging_dir(tmp_path / "m.xml") as tmp:
        Path(tmp, "m.xml").write_text("<net/>")
        move_into_place(Path(tmp, "m.xml"), tmp_path / "m.xml")
    assert _mode(tmp_path / "m.xml") == 0o666 & ~mask


def test_a_target_that_cannot_be_written_is_named_before_any_work(tmp_path):
    """The error named a hidden temporary file; a folder as target was an exporter failure."""
    from filterprune._atomic import check_writable

    with pytest.raises(IsADirectoryError, match=f"Cannot write {tmp_path}: it is a folder"):
        check_writable(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(OSError, match=f"Cannot write {blocker}/m.onnx: .*Choose a folder"):
        atomic_write(blocker / "m.onnx", lambda tmp: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_torch_files_written_twice_alike_are_equal_bytes(tmp_path):
    """torch.save named the archive's root folder after the temporary's random name."""
    import torch

    from filterprune._atomic import atomic_torch_save

    state = {"w": torch.arange(6.0)}
    for name in ("a.pt", "b.pt"):
        atomic_torch_save(tmp_path / name, state)
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert torch.equal(torch.load(tmp_path / "a.pt")["w"], state["w"])


def test_the_check_of_a_missing_folder_makes_none(tmp_path):
    """The check made the folders, so a run refused after it left them empty behind."""
    from filterprune._atomic import check_writable

    check_writable(tmp_path / "out" / "deep" / "m.onnx")
    assert list(tmp_path.iterdir()) == []
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(NotADirectoryError, match=f"Cannot write {blocker}/a/m.onnx: .*is a file"):
        check_writable(blocker / "a" / "m.onnx")
    atomic_write_text(tmp_path / "out" / "deep" / "m.txt", "x")  # the write makes them
    assert (tmp_path / "out" / "deep" / "m.txt").read_text() == "x"
