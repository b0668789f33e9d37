"""Shared helpers of the benchmark scripts: the machine header, timing, tables and JSON.

Every printed figure must say where and how it was measured, so each script starts its output
with ``format_header(machine_info(...))``: date, exact command, CPU model and cores, torch
version and threads, GPU name and the load average (a busy machine gives slower numbers).
"""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from vit.errors import VitError
from vit.io import write_json  # re-exported: the benchmarks' JSON files are written atomically too

__all__ = [
    "BenchmarkError",
    "Column",
    "command_line",
    "cpu_model",
    "format_header",
    "format_table",
    "load_average",
    "machine_info",
    "parse_list",
    "pin_malloc",
    "run_cli",
    "time_alternating",
    "time_call",
    "write_json",
]

REPO_ROOT = Path(__file__).resolve().parent.parent


class BenchmarkError(VitError):
    """A benchmark cannot give a meaningful number (e.g. the two models disagree)."""


# --- where the numbers come from ----------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's "model name" from /proc/cpuinfo, or what ``platform`` knows elsewhere."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command_line(script: str | os.PathLike[str], argv: Sequence[str]) -> str:
    """The command that reproduces this run, e.g. ``python benchmarks/model_speed.py --batch 8``."""
    path = Path(script).resolve()
    shown = path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path
    return shlex.join(["python", str(shown), *argv])


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (runnable processes; compare with the core count)."""
    return [round(v, 2) for v in os.getloadavg()]


def machine_info(device: torch.device, command: str) -> dict[str, Any]:
    """Facts that must travel with every number: when, what command, on which machine."""
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "loadavg": load_average(),
    }


def format_header(info: Mapping[str, Any]) -> str:
    """The header lines every benchmark prints before its table (``loadavg_end`` if present)."""
    lines = [
        f"date:    {info['date']}",
        f"command: {info['command']}",
        f"cpu:     {info['cpu']}, {info['cpu_count']} cores, torch threads {info['torch_threads']}",
        f"torch:   {info['torch']}, python {info['python']}, {info['platform']}",
        f"device:  {info['device']}"
        + (f" ({info['gpu']}, CUDA {info['cuda']})" if info.get("gpu") else ""),
        "load:    {:.2f} {:.2f} {:.2f} (1, 5, 15 min averages; above the core count means "
        "other work competed for the CPU)".format(*info["loadavg"]),
    ]
    if "loadavg_end" in info:
        lines.append("load:    {:.2f} {:.2f} {:.2f} at the end".format(*info["loadavg_end"]))
    return "\n".join(lines)


# --- timing -------------------------------------------------------------------------------------


def pin_malloc() -> bool:
    """Keep freed memory mapped between steps (see ``vit.runtime.keep_freed_memory``)."""
    from vit.runtime import keep_freed_memory

    return keep_freed_memory()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device: torch.device, iters: int = 1) -> float:
    """Seconds per call of ``fn``, averaged over ``iters`` back-to-back calls.

    On CUDA the queue is drained first and the time is taken with CUDA events, so it covers the
    GPU work that ``fn`` launched, not just the launching.
    """
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    _synchronize(device)
    if device.type == "cuda":
        with torch.cuda.device(device):  # events go on this device's current stream
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(iters):
                fn()
            end.record()
            end.synchronize()
        return start.elapsed_time(end) / 1e3 / iters
    start_s = time.perf_counter()
    for _ in range(iters):
        fn()
    return (time.perf_counter() - start_s) / iters


def time_alternating(
    fns: Mapping[str, Callable[[], object]], *, device: torch.device, warmup: int, repeats: int,
    iters: int = 1,
) -> dict[str, list[float]]:
    """Seconds per call of each function, ``repeats`` samples each, taken in turns.

    After ``warmup`` untimed rounds, every round times each function once; odd rounds go in
    reverse order, so slow drifts (clock speed, other jobs) and any first-or-second-in-the-round
    effect hit all functions alike. Compare medians, or the per-round ratios.
    """
    if repeats < 1 or warmup < 0:
        raise ValueError(f"need repeats >= 1 and warmup >= 0, got {repeats}, {warmup}")
    names = list(fns)
    for _ in range(warmup):
        for name in names:
            fns[name]()
    _synchronize(device)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name].append(time_call(fns[name], device, iters))
    return times


# --- output -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Column:
    """One table column: the row key it shows, its title and a format spec such as ``.1f``."""

    key: str
    title: str
    fmt: str = ""


def _cell(value: Any, fmt: str) -> str:
    if value is None:
        return "-"
    return format(value, fmt) if fmt else str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[Column]) -> str:
    """A plain-text table; the first column is left-aligned, the others right-aligned."""
    cells = [[c.title for c in columns]]
    cells += [[_cell(row.get(c.key), c.fmt) for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]

    def render(line: list[str]) -> str:
        first = line[0].ljust(widths[0])
        rest = [text.rjust(width) for text, width in zip(line[1:], widths[1:], strict=True)]
        return "  ".join([first, *rest])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([render(cells[0]), rule, *(render(line) for line in cells[1:])])


def parse_list(text: str) -> list[str]:
    """``"a,b, c"`` -> ``["a", "b", "c"]``; empty items dropped."""
    return [item.strip() for item in text.split(",") if item.strip()]


def run_cli(main: Callable[[], object]) -> None:
    """Run a benchmark's ``main``; a ``VitError`` becomes one line on stderr and exit status 1."""
    try:
        main()
    except VitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
