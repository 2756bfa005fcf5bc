"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``,
so a reader never sees a half-written checkpoint or report.

A temporary file is named ``<target>.<pid>.<random>.tmp``; a run that is killed
leaves it behind, and :func:`remove_stale_tmp` removes those whose process is gone
(a live writer's file is left alone, so two runs may share a models folder)."""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

# atomic_write's temporary names (mkstemp's random part is 8 characters); older versions had no pid.
_TMP = re.compile(r"^(?P<target>.+?)\.(?:(?P<pid>\d+)\.)?[a-z0-9_]{8}\.tmp$")
_TARGETS = re.compile(r"^(.+\.pt|results\.json|results\.png)$")  # what fastmix writes into its folders


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write) -> None:
    """Call ``write(tmp_path)`` and move the result to ``path``; nothing is left behind on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f"{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual mode
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def remove_stale_tmp(folder: Path) -> list[Path]:
    """Remove the temporary files of interrupted :func:`atomic_write` calls in ``folder``
    (those whose writing process no longer runs, and the older ``<target>.<random>.tmp``
    files without a process id) for the files fastmix writes there (checkpoints,
    results.json, results.png); any other file is left alone. Returns what was removed."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = []
    for p in folder.glob("*.tmp"):
        m = _TMP.match(p.name)
        if m is None or not _TARGETS.match(m["target"]) or (m["pid"] is not None and _alive(int(m["pid"]))):
            continue
        try:
            p.unlink()
            removed.append(p)
        except FileNotFoundError:
            pass
    return removed


def check_writable(folder: Path, what: str) -> None:
    """Create ``folder`` if needed and write and remove a probe file there, so that an
    unwritable output folder is found before any work; ``what`` names it in the error
    (``--out``). Raises :class:`ValueError` naming the folder and the reason."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".fastmix-probe.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{what} {folder}: cannot write there ({e.strerror or e})") from None
