"""Atomic writes, the clean-up of interrupted ones, and the output-folder probe."""
import os
import subprocess
import sys

import pytest

from fastmix.harness.atomic import atomic_write, check_writable, remove_stale_tmp


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_stale_temporary_files_are_removed_and_live_ones_kept(tmp_path):
    live = tmp_path / f"a.pt.{os.getpid()}.x1y2z3_4.tmp"
    stale = tmp_path / f"b.pt.{dead_pid()}.x1y2z3_4.tmp"
    legacy = tmp_path / "results.json.k3j4h5ab.tmp"  # an older run's name, without a process id
    others = [tmp_path / "notes.txt", tmp_path / "notes.tmp", tmp_path / f"mine.csv.{dead_pid()}.x1y2z3_4.tmp"]
    for p in (live, stale, legacy, *others):
        p.write_text("x")
    assert sorted(remove_stale_tmp(tmp_path)) == sorted([stale, legacy])
    assert live.exists() and all(p.exists() for p in others)  # a user's own files are never touched
    assert remove_stale_tmp(tmp_path / "missing") == []


def test_atomic_write_names_its_temporary_file_by_process(tmp_path):
    seen = []
    atomic_write(tmp_path / "r.json", lambda tmp: (seen.append(os.path.basename(tmp)), open(tmp, "w").write("{}")))
    assert seen[0].startswith(f"r.json.{os.getpid()}.") and seen[0].endswith(".tmp")
    assert (tmp_path / "r.json").read_text() == "{}" and not list(tmp_path.glob("*.tmp"))


def test_check_writable(tmp_path):
    check_writable(tmp_path / "new" / "deep", "output folder (--out)")
    assert (tmp_path / "new" / "deep").is_dir() and not list((tmp_path / "new" / "deep").iterdir())
    (tmp_path / "f").write_text("")
    with pytest.raises(ValueError, match=r"--out.*f/sub"):
        check_writable(tmp_path / "f" / "sub", "output folder (--out)")
