"""One run writes a run folder at a time: RUN/run.lock names the process that does.

    lock = acquire_run_lock(run_dir)   # refused (RunLockedError) while a live run holds it
    ...
    lock.release()

The lock is a small JSON file ``{"pid", "host", "started"}`` created with ``O_CREAT | O_EXCL``
(atomic on local and NFSv3+ file systems). A lock whose process is gone (the run was killed) is
taken over with a warning. A lock held on another host cannot be checked from here and is
respected: delete the file by hand once that run is known to be dead.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vit import run_folder
from vit.errors import OutputError

__all__ = ["LOCK_NAME", "RunLockedError", "RunLock", "acquire_run_lock"]

logger = logging.getLogger(__name__)

LOCK_NAME = run_folder.LOCK


class RunLockedError(OutputError):
    """Another live run is writing this run folder."""


@dataclass
class RunLock:
    path: Path
    owner: dict[str, Any]

    def release(self) -> None:
        """Remove the lock if it is still ours (a run that took over a stale one keeps it)."""
        if _read(self.path) == self.owner:
            self.path.unlink(missing_ok=True)


def _read(path: Path) -> dict[str, Any] | None:
    """The lock's holder; None when the file is gone or unreadable (cut short by a crash)."""
    try:
        holder = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def _alive(holder: dict[str, Any]) -> bool:
    """Whether the holder may still run: certainly not when it is a process of this host that
    is gone; a process of another host counts as alive (it cannot be checked from here)."""
    if holder.get("host") != socket.gethostname():
        return True
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid == os.getpid():  # ours: an earlier run of this process
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid')} on {holder.get('host')}, started "
            f"{holder.get('started', '?')}")


def acquire_run_lock(run_dir: str | os.PathLike) -> RunLock:
    """Take RUN/run.lock for this process; ``RunLockedError`` names the live run holding it."""
    path = Path(run_dir) / LOCK_NAME
    owner = {"pid": os.getpid(), "host": socket.gethostname(),
             "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
    for _ in range(3):
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is not None and _alive(holder):
                raise RunLockedError(
                    f"{run_dir} is being written by another run ({_describe(holder)}; lock "
                    f"{path}); wait for it to end or choose another --output (if that run is "
                    "dead, delete the lock file)") from None
            logger.warning("taking over %s from a run that is no longer running (%s)", path,
                           _describe(holder) if holder is not None else "unreadable lock")
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            continue
        except OSError as e:
            raise OutputError(f"cannot create {path}: {e.strerror or e}") from e
        with os.fdopen(fd, "w") as f:
            f.write(json.dumps(owner) + "\n")
        return RunLock(path=path, owner=owner)
    raise RunLockedError(f"could not take {path}: other runs keep taking it; is a second run "
                         f"being started on {run_dir} right now?")
