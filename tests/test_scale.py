"""Beyond one machine: several nodes, FSDP2, activation checkpointing, and the faults of scale.

Everything runs on the CPU with gloo; two torchrun launches on this machine stand in for two
nodes. Models are tiny and runs short: these tests show that the steps are the same, not speed.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from tests.test_train import ROOT, _cli_args, assert_same_weights, make_folder, weights

# one machine: gloo over loopback, whatever the host name resolves to
DIST_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1",
            "GLOO_SOCKET_IFNAME": "lo"}


def free_port() -> int:
    """A TCP port nobody listens on now (the rendezvous of the two launches meets there)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(args: list[str], *, nnodes: int = 1, nproc: int = 2, port: int | None = None,
             run_id: str = "vit-test") -> list[str]:
    endpoint = f"127.0.0.1:{port if port is not None else 0}"
    return [sys.executable, "-m", "torch.distributed.run", f"--nnodes={nnodes}",
            f"--nproc_per_node={nproc}", "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}",
            f"--rdzv-id={run_id}", str(ROOT / "train.py"), *args]


@pytest.mark.slow
def test_two_nodes_of_two_processes_match_one_process(tmp_path):
    """torchrun --nnodes=2 --nproc_per_node=2, launched twice here: 4 ranks with a quarter of
    the global batch each end with the weights of 1 process with the whole batch."""
    data = make_folder(tmp_path / "data", per_class=16)
    single = subprocess.run([sys.executable, str(ROOT / "train.py"),
                             *_cli_args(data, tmp_path / "single", 2)],
                            cwd=ROOT, env=DIST_ENV, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]

    port = free_port()
    cmd = torchrun(_cli_args(data, tmp_path / "nodes", 2), nnodes=2, port=port,
                   run_id=f"two-nodes-{port}")
    nodes = [subprocess.Popen(cmd, cwd=ROOT, env=DIST_ENV, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [node.communicate(timeout=300) for node in nodes]
    for node, (_, err) in zip(nodes, outs, strict=True):
        assert node.returncode == 0, err[-3000:]
    stdout = "".join(out for out, _ in outs)
    assert stdout.count("done: best val top-1") == 1  # only global rank 0 talks
    lines = (tmp_path / "nodes" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    assert_same_weights(weights(tmp_path / "single" / "last.pt"),
                        weights(tmp_path / "nodes" / "last.pt"), exact=False)
