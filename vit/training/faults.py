"""The faults a cluster produces, each turned into one line: what happened, that the last good
last.pt is kept, and the command that continues from it.

    a loader worker killed by the OS    RuntimeError "DataLoader worker (pid N) is killed ..."
    another torchrun process died       a gloo/NCCL error here, or torchrun's SIGTERM
    the disk filled up                  OutputError from the atomic writer (errno ENOSPC)
    SIGTERM or SIGINT                   a scheduler's time limit, a closed terminal, Ctrl-C

A stop signal is named as the cause of whatever it brings down: sent to the run's process group
(a scheduler, a terminal), it also ends the loader workers, and their end is not a fault of its
own (``stop_on_signals``).

``guarded_run`` holds a whole run: the signals handled, a fault's line raised in place of its
error. A stop in the epochs saves a resumable last.pt first and ends with
``TrainingInterrupted``. (A second run on a live run's folder is refused before it starts:
``vit.training.run_lock``.)
"""

from __future__ import annotations

import contextlib
import errno
import logging
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from vit import run_folder
from vit.errors import OutputError, VitError, first_line

__all__ = ["RunStopped", "TrainingInterrupted", "StopRequest", "explain_fault",
           "stop_on_signals", "guarded_run"]

logger = logging.getLogger(__name__)

# What gloo and NCCL say when a peer process is gone (besides torch's DistError types).
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "NCCL", "gloo",
              "Broken pipe")


class RunStopped(VitError):
    """A fault stopped the run; the message says what, and how to continue."""


class TrainingInterrupted(VitError):
    """Ctrl-C or SIGTERM: a resumable last.pt was written; the message says how to resume."""

    def __init__(self, message: str, signal_name: str = "SIGINT"):
        super().__init__(message)
        self.signal_name = signal_name

    @classmethod
    def in_epoch(cls, signal_name: str | None, *, epoch: int, batches_done: int,
                 batches_per_epoch: int, run_dir: Path) -> TrainingInterrupted:
        """Stopped in ``epoch`` (from 0) after ``batches_done`` batches, once last.pt is saved."""
        name = signal_name or "SIGINT"
        how = "interrupted by SIGINT (Ctrl-C)" if name == "SIGINT" else f"stopped by {name}"
        return cls(f"{how} in epoch {epoch + 1} after {batches_done} of {batches_per_epoch} "
                   f"batches; resumable checkpoint {run_dir / run_folder.LAST}; continue with: "
                   f"--resume {run_dir}", signal_name=name)


def _continue(run_dir: Path) -> str:
    last = run_dir / run_folder.LAST
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


def explain_fault(error: BaseException, *, run_dir: Path, rank: int,
                  stopped_by: str | None = None) -> RunStopped | None:
    """The one-line ``RunStopped`` for a fault of scale; None for any other error.
    ``stopped_by``: the stop signal the run received, which then is the cause."""
    raised_by_stop = _stop_in_chain(error)
    if raised_by_stop is not None:  # the handler's own error, wrapped by the code it stopped
        return raised_by_stop
    if stopped_by is not None:
        return RunStopped(f"stopped by {_describe(stopped_by)}; {_continue(run_dir)}")
    if isinstance(error, RuntimeError) and "DataLoader worker" in str(error):
        return _worker_fault(error, run_dir)
    if _is_peer_gone(error):
        return RunStopped(
            f"process {rank} lost the other processes of this run ({_short(error)}); "
            f"one of them stopped (torchrun's summary names it); {_continue(run_dir)}")
    cause = error.__cause__
    if isinstance(error, OutputError) and getattr(cause, "errno", None) == errno.ENOSPC:
        return RunStopped(f"{error} (the disk is full; nothing half-written is left behind); "
                          f"free some space, then {_continue(run_dir)}")
    return None


def _worker_fault(error: BaseException, run_dir: Path) -> RunStopped:
    """A loader worker ended with no stop signal here: out of memory, unless torch saw another
    signal end it (a crash: "killed by signal: Segmentation fault"). The OOM killer's SIGKILL
    reads "killed by signal: Killed", or "exited unexpectedly" when found by polling."""
    text = first_line(error).strip()
    if "by signal:" not in text or "signal: Killed" in text:
        return RunStopped(
            f"a data loader worker was killed ({text}); the system may have run out of memory: "
            f"lower --workers or --batch-size; {_continue(run_dir)}")
    return RunStopped(f"a data loader worker stopped ({text}); {_continue(run_dir)}")


def _stop_in_chain(error: BaseException) -> RunStopped | None:
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, RunStopped):
            return error
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return None


_WHY = {"SIGTERM": "SIGTERM (a scheduler's time limit, a closed terminal, or torchrun stopping "
                   "every process when one of them fails)",
        "SIGINT": "SIGINT (Ctrl-C)"}


def _describe(signal_name: str) -> str:
    return _WHY.get(signal_name, signal_name)


@dataclass
class StopRequest:
    """What the stop signals asked. In the epochs (``graceful``) the first SIGINT, and in a
    single process the first SIGTERM, set ``event``: the loop finishes its step and writes a
    resumable last.pt. Elsewhere SIGTERM raises ``RunStopped`` at once, SIGINT
    KeyboardInterrupt; so does a second signal."""

    event: threading.Event = field(default_factory=threading.Event)
    signal_name: str | None = None  # the first stop signal received
    graceful: bool = False
    graceful_sigterm: bool = True  # False with torchrun: a peer may be gone, stop at once

    def handle(self, signum: int, run_dir: Path) -> None:
        name = signal.Signals(signum).name
        self.signal_name = self.signal_name or name
        wait = self.graceful and (signum == signal.SIGINT or self.graceful_sigterm)
        if not wait or self.event.is_set():
            if signum == signal.SIGINT:
                raise KeyboardInterrupt
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a third one ends the process
            raise RunStopped(f"stopped by {_describe(name)}; {_continue(run_dir)}")
        self.event.set()
        logger.warning("%s: finishing this step and saving a resumable checkpoint (send it again "
                       "to stop at once, without saving)", name)


@contextlib.contextmanager
def stop_on_signals(run_dir: Path, *, graceful_sigterm: bool = True) -> Iterator[StopRequest]:
    """SIGTERM and SIGINT for the duration of a run (``StopRequest``), named in the line that
    ends it instead of a misleading fault; the previous handlers come back after."""
    request = StopRequest(graceful_sigterm=graceful_sigterm)
    if threading.current_thread() is not threading.main_thread():
        yield request
        return

    def handler(signum, frame):  # noqa: ARG001
        request.handle(signum, run_dir)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield request
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def guarded_run(run_dir: Path, *, rank: int, graceful_sigterm: bool = True
                ) -> Iterator[StopRequest]:
    """A run's whole duration: the stop signals handled (``stop_on_signals``), and a fault of
    scale that ends it turned into its one line (``explain_fault``; any other error passes)."""
    request = StopRequest()
    try:
        with stop_on_signals(run_dir, graceful_sigterm=graceful_sigterm) as request:
            yield request
    except (RuntimeError, OutputError) as e:
        fault = explain_fault(e, run_dir=run_dir, rank=rank, stopped_by=request.signal_name)
        if fault is None:
            raise
        raise fault from e
