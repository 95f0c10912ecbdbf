"""The package's atomic writer: old files survive failures, no temporaries are left."""

import os
import stat
from pathlib import Path

import pytest

from filterprune._atomic import (
    atomic_dir,
    atomic_write,
    atomic_write_bytes,
    atomic_write_text,
    move_into_place,
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
