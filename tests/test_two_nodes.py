"""Two "nodes" on one machine (chapter 10): the torchrun launch a cluster runs once per machine.

``companion.launch.torchrun_nodes`` starts two ``torchrun --nnodes=2 --node_rank=i --rdzv_backend=c10d
--rdzv_endpoint=127.0.0.1:PORT`` launches with one process each; the digits demo trained that way ends
with the weights of one node running two processes, bit for bit once both use one thread per process
(torchrun sets ``OMP_NUM_THREADS=1`` by itself only where it starts several processes per node).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

from companion.launch import TorchrunError, torchrun, torchrun_command, torchrun_nodes

ROOT = Path(__file__).resolve().parent.parent
EPOCHS = "2"


def test_torchrun_command_for_node_1_of_2_names_the_rendezvous_and_leaves_hosting_to_node_0():
    command = torchrun_command(
        "companion.ddp_demo",
        "--epochs",
        "2",
        nproc_per_node=1,
        nnodes=2,
        node_rank=1,
        rdzv_endpoint="127.0.0.1:29400",
        rdzv_id="job",
    )
    assert command[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert command[3:] == [
        "--nnodes=2",
        "--node_rank=1",
        "--rdzv_backend=c10d",
        "--rdzv_endpoint=127.0.0.1:29400",
        "--rdzv_id=job",
        "--rdzv_conf=is_host=0",
        "--nproc_per_node=1",
        "-m",
        "companion.ddp_demo",
        "--epochs",
        "2",
    ]
    assert "--standalone" in torchrun_command("companion.ddp_demo")


def test_torchrun_command_refuses_a_node_rank_outside_the_nodes_and_nodes_without_a_rendezvous():
    with pytest.raises(ValueError, match=r"node_rank must be an int from 0 to nnodes - 1 = 1, got 2"):
        torchrun_command("m", nnodes=2, node_rank=2, rdzv_endpoint="127.0.0.1:1")
    with pytest.raises(ValueError, match=r"nnodes=2 needs rdzv_endpoint='host:port'"):
        torchrun_command("m", nnodes=2)
    with pytest.raises(ValueError, match="nnodes must be a positive int"):
        torchrun_nodes("m", nnodes=0)


def test_a_node_that_fails_stops_every_node_and_is_named(tmp_path):
    with pytest.raises(TorchrunError, match=r"node \d of 2 \(`.*`\) failed with exit status 1"):
        torchrun_nodes(str(tmp_path / "missing.py"), module=False, timeout=120, cwd=ROOT)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The digits demo for 2 epochs: 2 nodes x 1 process, then 1 node x 2 processes; seconds of each."""
    out = tmp_path_factory.mktemp("nodes")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    started = time.perf_counter()
    nodes = torchrun_nodes(
        "companion.ddp_demo", "--epochs", EPOCHS, "--out", str(out / "two"), timeout=300, cwd=ROOT, env=env
    )
    two_seconds = time.perf_counter() - started
    started = time.perf_counter()
    torchrun(
        "companion.ddp_demo", "--epochs", EPOCHS, "--out", str(out / "one"), timeout=300, cwd=ROOT, env=env
    )
    one_seconds = time.perf_counter() - started
    print(f"\n2 nodes x 1 process: {two_seconds:.1f} s; 1 node x 2 processes: {one_seconds:.1f} s")
    for i, node in enumerate(nodes):
        print(f"node {i}:\n{node.stdout}")
    weights = {k: torch.load(out / k / "weights.pt", weights_only=True) for k in ("one", "two")}
    return nodes, weights


def test_two_nodes_of_one_process_end_with_the_weights_of_one_node_of_two_bit_for_bit(runs):
    _, weights = runs
    assert weights["two"]["world_size"] == weights["one"]["world_size"] == 2
    for epoch, (two, one) in enumerate(zip(weights["two"]["weights"], weights["one"]["weights"]), 1):
        assert all(torch.equal(two[k], one[k]) for k in one), f"epoch {epoch}"

    def without_seconds(rows):
        return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]

    assert without_seconds(weights["two"]["history"]) == without_seconds(weights["one"]["history"])


def test_each_node_prints_its_own_ranks_lines(runs):
    nodes, _ = runs
    ranks = [{line.split(":")[0] for line in node.stdout.splitlines()} for node in nodes]
    assert sorted(r for node in ranks for r in node) == ["rank 0", "rank 1"], "one rank per node"
    for node in nodes:
        assert "one of 2 processes (gloo, cpu)" in node.stdout
        assert "the same history as every rank: True; the same weights: True" in node.stdout
