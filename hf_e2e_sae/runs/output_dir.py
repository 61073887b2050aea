"""One run per output directory, checked before any work; durable writes that say when the disk is full.

`prepare_output_dir` runs before the base model loads: it creates `output_dir` (or fails naming it), proves it
writable, takes an exclusive `fcntl.flock` on `output_dir/.lock` for the run's lifetime (a second run fails at
once naming the holder's pid; the kernel drops the lock when its process dies, so a stale lock file never
blocks), removes half-written `.tmp-*` folders, and refuses a directory that holds another run's checkpoints or
final/ unless the run resumes it or `overwrite_output_dir: true` says to replace it. A finished run (final/) with no
checkpoint is never "resumed": `resume_from_checkpoint=latest` would start fresh and replace final/, so it is
refused too; the refusal suggests resuming only when there is a checkpoint to resume from.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, Optional

logger = logging.getLogger(__name__)

LOCK_NAME = ".lock"
TMP_PREFIX = ".tmp-"


class OutputDirError(RuntimeError):
    """output_dir cannot be used: not creatable or writable, in use by another run, or holding another run."""


class DiskFullError(OSError):
    """Writing an artifact failed because the disk (or quota) is full; names the path."""


class OutputDirLock:
    """An exclusive flock on `output_dir/.lock`, held until `release()` or until the object is collected."""

    def __init__(self, output_dir: Path):
        self.path = output_dir / LOCK_NAME
        self._file = open(self.path, "a+")
        try:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            self._file.seek(0)
            holder = self._file.read().strip() or "unknown"
            self._file.close()
            raise OutputDirError(f"output_dir={output_dir} is in use by another run (pid {holder}): wait for it "
                                 "to finish, or choose another output_dir.") from e
        self._file.seek(0)
        self._file.truncate()
        self._file.write(f"{os.getpid()}\n")
        self._file.flush()

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.release()


def _check_writable(output_dir: Path) -> None:
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output_dir, prefix=TMP_PREFIX + "probe-"):
            pass
    except OSError as e:
        raise OutputDirError(f"output_dir={output_dir} is not usable: {e.strerror or e} "
                             f"({type(e).__name__}); choose a writable directory.") from e


def _previous_run(output_dir: Path) -> list:
    checkpoints = output_dir / "checkpoints"
    found = sorted(p.name for p in checkpoints.iterdir() if p.name.startswith("step_")) if checkpoints.is_dir() else []
    return (["final/"] if (output_dir / "final").exists() else []) + [f"checkpoints/{name}" for name in found]


def remove_stale_tmp(output_dir: Path) -> None:
    """Delete `.tmp-*` folders a killed run left behind (never complete: only finished ones are renamed)."""
    for folder in (output_dir, output_dir / "checkpoints"):
        if folder.is_dir():
            for stale in folder.glob(TMP_PREFIX + "*"):
                logger.warning("Removing %s, left half-written by an interrupted run", stale)
                shutil.rmtree(stale, ignore_errors=True) if stale.is_dir() else stale.unlink(missing_ok=True)


def prepare_output_dir(output_dir, resume_from_checkpoint: Optional[str], overwrite: bool) -> OutputDirLock:
    """Check and lock `output_dir` for this run (main process only); returns the lock to hold."""
    path = Path(output_dir)
    _check_writable(path)
    lock = OutputDirLock(path)
    remove_stale_tmp(path)
    previous = _previous_run(path)
    nothing_to_resume = resume_from_checkpoint == "latest" and previous == ["final/"]
    if previous and (resume_from_checkpoint is None or nothing_to_resume):
        if not overwrite:
            lock.release()
            raise OutputDirError(_refusal(path, previous, nothing_to_resume))
        logger.warning("overwrite_output_dir: deleting the previous run's %s in %s", ", ".join(previous), path)
        shutil.rmtree(path / "final", ignore_errors=True)
        shutil.rmtree(path / "checkpoints", ignore_errors=True)
    return lock


def _refusal(path: Path, previous: list, nothing_to_resume: bool) -> str:
    """Why `path` is refused and what is safe to do: resuming is suggested only when a checkpoint exists."""
    held = ", ".join(previous[:3]) + (", ..." if len(previous) > 3 else "")
    if nothing_to_resume:
        return (f"resume_from_checkpoint=latest: output_dir={path} holds a finished run (final/) and no checkpoint "
                "to resume from, and starting fresh would replace it: choose another output_dir, or set "
                "overwrite_output_dir=true to delete and replace it.")
    resume = "; or set resume_from_checkpoint=latest to continue from its newest checkpoint" \
        if previous != ["final/"] else ""  # only where there is a checkpoint to resume from
    return (f"output_dir={path} holds another run ({held}): choose another output_dir or set "
            f"overwrite_output_dir=true to delete and replace it{resume}.")


def disk_error(error: BaseException, path) -> BaseException:
    """`DiskFullError` naming `path` when `error` means the disk is full; otherwise `error` itself."""
    full = isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
    # torch's zip writer reports a failed write (in practice: a full disk) as a RuntimeError.
    full = full or (isinstance(error, RuntimeError) and any(
        s in str(error) for s in ("inline_container", "file write failed", "unexpected pos")))
    if not full:
        return error
    free = shutil.disk_usage(Path(path).parent if Path(path).parent.exists() else ".").free
    return DiskFullError(errno.ENOSPC, f"the disk is full: could not write {path} ({free / 2**20:.0f} MiB free "
                                       f"there). Free space and resume from the last checkpoint. ({error})")


def write_bytes_durably(path, data: bytes) -> None:
    """Write `data` to `path` and fsync it (a crash after this returns never leaves a truncated file)."""
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:
        raise disk_error(e, path) from e


def fsync_tree(folder: Path) -> None:
    """fsync every file under `folder` and the directories themselves (their entries)."""
    for item in sorted(folder.rglob("*"), key=lambda p: len(p.parts), reverse=True) + [folder]:
        fd = os.open(item, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def publish_dir(tmp: Path, final: Path) -> None:
    """Atomically put the complete, fsynced `tmp` at `final` (replacing an older `final`)."""
    fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    fsync_tree_dir = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fsync_tree_dir)
    finally:
        os.close(fsync_tree_dir)


@contextlib.contextmanager
def staged_dir(final: Path) -> Iterator[Path]:
    """Write a folder as `.tmp-<name>` and rename it to `final` only when complete; on error remove it."""
    tmp = final.parent / f"{TMP_PREFIX}{final.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        publish_dir(tmp, final)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        mapped = disk_error(e, tmp) if isinstance(e, (OSError, RuntimeError)) else e
        if mapped is not e:
            raise mapped from e
        raise
