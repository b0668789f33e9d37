"""The faults a cluster produces, each turned into one line: what happened, that the last good
last.pt is kept, and the command that continues from it.

    a loader worker killed by the OS    RuntimeError "DataLoader worker (pid N) is killed ..."
    another torchrun process died       a gloo/NCCL error here, or torchrun's SIGTERM
    the disk filled up                  OutputError from the atomic writer (errno ENOSPC)

(A second run on a live run's folder is refused before it starts: ``vit.training.run_lock``.)
"""

from __future__ import annotations

import contextlib
import errno
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

from vit.errors import OutputError, VitError, first_line

__all__ = ["RunStopped", "explain_fault", "stop_on_sigterm"]

# What gloo and NCCL say when a peer process is gone (besides torch's DistError types).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "NCCL", "gloo",
              "Broken pipe")


class RunStopped(VitError):
    """A fault stopped the run; the message says what, and how to continue."""


def _continue(run_dir: Path) -> str:
    last = run_dir / "last.pt"
    if not last.is_file():
        return "no checkpoint was written yet: start the run again"
    return f"the last good checkpoint {last} is kept; continue with: --resume {run_dir}"


def _is_peer_gone(error: BaseException) -> bool:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return False
    if isinstance(error, dist.DistError):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and any(s in text for s in _PEER_GONE)


def _short(error: BaseException) -> str:
    """gloo's "[.../pair.cc:561] Connection closed by peer [127.0.0.1]:2954. This is ..." ->
    "Connection closed by peer [127.0.0.1]:2954"."""
    text = re.sub(r"^\[[^\]]*\]\s*", "", first_line(error).strip())
    return text.split(". ")[0][:200]


def explain_fault(error: BaseException, *, run_dir: Path, rank: int) -> RunStopped | None:
    """The one-line ``RunStopped`` for a fault of scale; None for any other error."""
    if isinstance(error, RuntimeError) and "DataLoader worker" in str(error):
        return RunStopped(
            f"a data loader worker was killed ({first_line(error).strip()}); the system may "
            f"have run out of memory: lower --workers or --batch-size; {_continue(run_dir)}")
    if _is_peer_gone(error):
        return RunStopped(
            f"process {rank} lost the other processes of this run ({_short(error)}); "
            f"one of them stopped (torchrun's summary names it); {_continue(run_dir)}")
    cause = error.__cause__
    if isinstance(error, OutputError) and getattr(cause, "errno", None) == errno.ENOSPC:
        return RunStopped(f"{error} (the disk is full; nothing half-written is left behind); "
                          f"free some space, then {_continue(run_dir)}")
    return None


@contextlib.contextmanager
def stop_on_sigterm(run_dir: Path) -> Iterator[None]:
    """SIGTERM (torchrun stopping the survivors of a failed process, a scheduler ending a job)
    raises ``RunStopped`` naming the checkpoint to resume from, instead of dying silently."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):  # noqa: ARG001
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a second SIGTERM ends the process
        raise RunStopped(f"stopped by SIGTERM (torchrun stops every process when one of them "
                         f"fails; a scheduler ends a job so); {_continue(run_dir)}")

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
