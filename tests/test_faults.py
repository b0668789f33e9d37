"""The faults of scale, each ending with one clear line, the last good last.pt intact and
loadable, and --resume continuing from it: a loader worker killed by the OS, a torchrun rank
that dies, a full disk while last.pt is written, and a second run on a live run's folder."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers.images import make_folder
from helpers.models import assert_same_weights, weights
from helpers.processes import DIST_ENV, torchrun
from helpers.training import ROOT, cli_args, start_train_script, wait_for

from vit.cli import main
from vit.models.checkpoint import load_checkpoint
from vit.training.run_lock import LOCK_NAME, RunLockedError, acquire_run_lock

needs_proc = pytest.mark.skipif(not Path("/proc/self/task").is_dir(),
                                reason="finds child processes through /proc (Linux)")


def children(pid: int) -> list[int]:
    """The child processes of ``pid`` (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return found


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def assert_resumes(run: Path, epochs: int) -> None:
    """--resume RUN (one process) finishes the run from its last.pt."""
    resumed = start_train_script(["--resume", str(run)])
    assert resumed.wait(timeout=300) == 0, resumed.communicate()[1][-3000:]
    assert load_checkpoint(run / "last.pt")["epoch"] == epochs
    assert not (run / LOCK_NAME).exists()  # a finished run leaves no lock


# --- a second run on a live run's folder -------------------------------------------------------


def test_run_lock_names_the_live_holder_and_takes_over_a_dead_ones(tmp_path, caplog):
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps(
            {"pid": live.pid, "host": socket.gethostname(), "started": "just now"}))
        with pytest.raises(RunLockedError, match=f"another run \\(pid {live.pid} on "):
            acquire_run_lock(tmp_path)
    finally:
        live.kill()
        live.wait()
    with caplog.at_level(logging.WARNING, logger="vit.training.run_lock"):
        lock = acquire_run_lock(tmp_path)  # that pid is gone now: a stale lock
    assert f"no longer running (pid {live.pid}" in caplog.text
    assert json.loads((tmp_path / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()
    assert not (tmp_path / LOCK_NAME).exists()
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RunLockedError, match="pid 1 on elsewhere"):  # cannot check: respected
        acquire_run_lock(tmp_path)


@pytest.mark.slow
def test_second_run_on_a_live_runs_folder_is_refused(tmp_path, capsys):
    data = make_folder(tmp_path / "data", per_class=24)
    run = tmp_path / "run"
    first = start_train_script(cli_args(data, run, 3))
    try:
        wait_for(run / "last.pt", first)
        code = main(["train", "--resume", str(run)])  # while the first one still trains
        err = capsys.readouterr().err
        assert code == 2
        assert error_lines(err) == [line for line in err.splitlines() if line.strip()][-1:]
        assert f"being written by another run (pid {first.pid} on " in err
    finally:
        first.kill()  # dies holding the lock: the next run takes it over
        first.wait()
    load_checkpoint(run / "last.pt")  # intact
    assert json.loads((run / LOCK_NAME).read_text())["pid"] == first.pid
    assert_resumes(run, 3)


# --- the disk fills up while last.pt is written -------------------------------------------------


def test_full_disk_during_checkpoint_write_keeps_the_old_last_pt(tmp_path, monkeypatch, capsys):
    data = make_folder(tmp_path / "data")
    extra = ["train.lr=3e-3", "train.warmup_epochs=0.5"]  # tiny_config's
    assert main(["train", *cli_args(data, tmp_path / "straight", 3), *extra]) == 0
    capsys.readouterr()
    real_save = torch.save
    writes = []

    def disk_fills_up(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and "optimizer" in obj:  # last.pt
            writes.append(obj["epoch"])
            if obj["epoch"] == 2:
                f.write(b"PK\x03\x04 the first part of a checkpoint")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", disk_fills_up)
    run = tmp_path / "run"
    args = ["train", *cli_args(data, run, 3), *extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(error_lines(err)) == 1
    line = error_lines(err)[0]
    assert "last.pt: No space left on device (the disk is full" in line, line
    assert f"--resume {run}" in line
    assert writes == [1, 2]
    assert not list(run.glob(".*.tmp"))  # the cut-short write was removed
    assert load_checkpoint(run / "last.pt")["epoch"] == 1  # the old one, whole
    monkeypatch.setattr(torch, "save", real_save)

    assert main(["train", "--resume", str(run)]) == 0
    assert load_checkpoint(run / "last.pt")["epoch"] == 3
    assert_same_weights(weights(tmp_path / "straight" / "last.pt"), weights(run / "last.pt"))


# --- a loader worker killed by the OS -------------------------------------------------------


@pytest.mark.slow
@needs_proc
def test_loader_worker_killed_mid_epoch(tmp_path):
    data = make_folder(tmp_path / "data", per_class=24)
    run = tmp_path / "run"
    args = cli_args(data, run, 3)
    args[args.index("--workers") + 1] = "1"
    proc = start_train_script(args)
    wait_for(run / "last.pt", proc)
    me = cmdline(proc.pid)
    deadline = time.time() + 60
    while proc.poll() is None and time.time() < deadline:
        workers = [c for c in children(proc.pid) if cmdline(c) == me]
        if workers:
            os.kill(workers[0], signal.SIGKILL)  # what the OOM killer does
            break
        time.sleep(0.02)
    else:
        pytest.fail("no loader worker appeared")
    code = proc.wait(timeout=120)
    err = proc.communicate()[1]
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    assert len(error_lines(err)) == 1
    line = error_lines(err)[0]
    print(line)
    assert "a data loader worker was killed" in line and f"--resume {run}" in line, line
    load_checkpoint(run / "last.pt")
    assert_resumes(run, 3)


# --- one torchrun rank dies ---------------------------------------------------------------------


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.slow
@needs_proc
def test_one_torchrun_rank_dies(tmp_path):
    data = make_folder(tmp_path / "data", per_class=24)
    run = tmp_path / "run"
    proc = subprocess.Popen(torchrun(cli_args(data, run, 3)), cwd=ROOT, env=DIST_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_for(run / "last.pt", proc, timeout=300)
    rank1 = next((c for c in children(proc.pid) if _rank_of(c) == 1), None)
    assert rank1 is not None, "rank 1 not found"
    os.kill(rank1, signal.SIGKILL)
    proc.wait(timeout=120)
    err = proc.communicate()[1]
    assert proc.returncode != 0
    lines = error_lines(err)  # rank 0's; torchrun's own summary follows
    assert len(lines) == 1, err[-3000:]
    print(lines[0])
    assert "lost the other processes" in lines[0] or "SIGTERM" in lines[0], lines
    assert f"--resume {run}" in lines[0], lines
    load_checkpoint(run / "last.pt")
    assert_resumes(run, 3)


# --- a stop signal to the run's process group (issue 25) ------------------------------------


@pytest.mark.slow
@needs_proc
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_sent_to_the_process_group_is_named_not_blamed_on_memory(tmp_path, sig):
    """A scheduler's time limit or a closed terminal signals every process of the group, the
    loader workers too: the run said "a data loader worker was killed ... out of memory"."""
    data = make_folder(tmp_path / "data", per_class=24)
    run = tmp_path / "run"
    args = cli_args(data, run, 20)
    args[args.index("--workers") + 1] = "1"
    proc = start_train_script(args, start_new_session=True)  # its own process group, as under a scheduler
    wait_for(run / "last.pt", proc)
    deadline = time.time() + 60
    while not [c for c in children(proc.pid) if cmdline(c) == cmdline(proc.pid)]:
        assert time.time() < deadline and proc.poll() is None, "no loader worker appeared"
        time.sleep(0.02)
    os.killpg(proc.pid, sig)
    code = proc.wait(timeout=120)
    err = proc.communicate()[1]
    last = [line for line in err.splitlines() if line.strip()][-1]
    print(last)
    assert code in (2, 128 + sig), err[-3000:]  # a fault line, or the graceful stop's
    assert "Traceback" not in err and "memory" not in err, err[-3000:]
    assert sig.name in last and f"--resume {run}" in last, last
    load_checkpoint(run / "last.pt")


def test_a_worker_that_ends_after_a_stop_signal_is_the_stop():
    from vit.training.faults import RunStopped, explain_fault

    run = Path("RUN")
    exited = RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly")
    line = str(explain_fault(exited, run_dir=run, rank=0, stopped_by="SIGTERM"))
    assert line.startswith("stopped by SIGTERM") and "memory" not in line
    killed = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Killed. ")
    assert "run out of memory" in str(explain_fault(killed, run_dir=run, rank=0))  # the OOM killer
    assert "run out of memory" in str(explain_fault(exited, run_dir=run, rank=0))
    crashed = RuntimeError("DataLoader worker (pid 4242) is killed by signal: Segmentation fault.")
    assert "memory" not in str(explain_fault(crashed, run_dir=run, rank=0))
    stop = RunStopped("stopped by SIGTERM; ...")
    try:  # the handler's error, wrapped by the DataLoader that was waiting
        try:
            raise stop
        except RunStopped as e:
            raise RuntimeError("DataLoader worker (pid(s) 4242) exited unexpectedly") from e
    except RuntimeError as wrapped:
        assert explain_fault(wrapped, run_dir=run, rank=0) is stop


def test_a_stop_signal_in_the_epochs_waits_for_the_step_elsewhere_stops_at_once():
    from vit.training.faults import RunStopped, StopRequest

    request = StopRequest(graceful=True)
    request.handle(signal.SIGTERM, Path("RUN"))  # in the epochs: finish the step, then save
    assert request.event.is_set() and request.signal_name == "SIGTERM"
    with pytest.raises(RunStopped, match="stopped by SIGTERM"):  # again: at once
        request.handle(signal.SIGTERM, Path("RUN"))
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    with pytest.raises(RunStopped, match="stopped by SIGTERM"):  # set-up, overlays: at once
        StopRequest().handle(signal.SIGTERM, Path("RUN"))
    with pytest.raises(RunStopped):  # torchrun: a peer may be gone, do not wait for a step
        StopRequest(graceful=True, graceful_sigterm=False).handle(signal.SIGTERM, Path("RUN"))
    with pytest.raises(KeyboardInterrupt):
        StopRequest().handle(signal.SIGINT, Path("RUN"))
