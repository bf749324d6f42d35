"""Tensor parallelism inside each host, data parallelism across hosts: `parallel.tensor=2` on two hosts
with two ranks each (4 ranks; ranks 0-1 on host A and 2-3 on host B, so each tensor group is one
host and the data-parallel gradient averages and ZeRO-3 gathers cross the hosts).

  one_host   `deepspeed --num_gpus 4` on one host (the root namespace): the reference
  two_hosts  the same run launched from host A over pdsh/ssh with a hostfile of slots=2

tiny-test model, fp32, ZeRO-3, 4 steps of global batch 8 = 2 micro x 2 accumulation x 2 replicas.
"""
from __future__ import annotations

import pytest

from megatiny.checkpoint.metadata import read_metadata
from tests.helpers import free_port, run_command, venv_bin
from tests.multinode.conftest import start_two_hosts
from tests.multinode.test_train_two_hosts import (
    LAUNCH_TIMEOUT_S,
    TRAIN,
    _hostfile_launch,
    _losses,
    _write_config,
    _write_corpus,
)

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

STEPS = 4
LAYOUT = ("parallel.tensor=2", "runtime.precision=fp32", f"schedule.train_steps={STEPS}",
          "checkpoint.save_interval=0")


@pytest.fixture(scope="module")
def two_hosts_two_slots(tmp_path_factory):
    hosts = start_two_hosts(tmp_path_factory.mktemp("two_hosts_two_slots"), slots=2)
    try:
        yield hosts
    finally:
        hosts.stop()


@pytest.fixture(scope="module")
def runs(two_hosts_two_slots, tmp_path_factory):
    root = tmp_path_factory.mktemp("tensor_parallel_two_hosts")
    prefix = root / "corpus_text_document"
    _write_corpus(prefix)
    out = {"root": root}
    config = _write_config(root / "one_host.yaml", prefix, root / "one_host")
    launch = [venv_bin("deepspeed"), "--num_gpus", "4", "--master_port", str(free_port()), TRAIN]
    out["one_host"] = run_command([*launch, "--config", str(config), *LAYOUT], timeout=LAUNCH_TIMEOUT_S)
    config = _write_config(root / "two_hosts.yaml", prefix, root / "two_hosts")
    out["two_hosts"] = two_hosts_two_slots.run_on(_hostfile_launch(two_hosts_two_slots, config, *LAYOUT),
                                                  timeout=LAUNCH_TIMEOUT_S)
    return out


def test_tensor_parallel_in_each_host_data_parallel_across_matches_one_host(runs, two_hosts_two_slots):
    for name in ("one_host", "two_hosts"):
        result = runs[name]
        assert result.returncode == 0, (name, result.stdout[-8000:])
        assert "| 4 ranks |" in result.stdout, name
        assert ("2 micro x 2 accumulation x 2 data-parallel ranks | "
                "tensor 2 x context 1 x pipeline 1 x data 2") in result.stdout, name
    for host in two_hosts_two_slots.hosts:  # two ranks ran, and finished, on each host
        finished = [line for line in runs["two_hosts"].stdout.splitlines()
                    if line.startswith(f"{host.address}: ") and "exits successfully" in line]
        assert len(finished) == 2, runs["two_hosts"].stdout[-8000:]
    reference = _losses(runs["root"] / "one_host" / "metrics.jsonl")
    losses = _losses(runs["root"] / "two_hosts" / "metrics.jsonl")
    assert sorted(reference) == sorted(losses) == list(range(1, STEPS + 1))
    for step, loss in losses.items():
        assert loss == pytest.approx(reference[step], rel=1e-5), (step, losses, reference)
    world = read_metadata(runs["root"] / "two_hosts" / f"step_{STEPS:08d}")["train_state"].world
    assert (world.world_size, world.tensor_parallel_size) == (4, 2)
