"""Tensor parallelism inside each host, data parallelism across hosts: `parallel.tensor=2` on two hosts
with two ranks each (4 ranks; ranks 0-1 on host A and 2-3 on host B, so each tensor group is one
host and the data-parallel gradient averages and ZeRO-3 gathers cross the hosts).

  one_host    `deepspeed --num_gpus 4` on one host (the root namespace): the reference
  two_hosts   the same run launched from host A over pdsh/ssh with a hostfile of slots=2, saving a
              checkpoint every 4 steps
  supervised  `megatiny supervise --max-restarts 1` of the two-host run: rank 3 (on host B) kills
              itself (kill -9) at the start of step 6, after the step-4 checkpoint; the job is
              killed on both hosts and relaunched on both, resumes from step 4 and must end like
              `two_hosts` bit for bit (step-8 loss and weights)

tiny-test model, fp32, ZeRO-3, 8 steps of global batch 8 = 2 micro x 2 accumulation x 2 replicas.
"""
from __future__ import annotations

import os
import time

import pytest

from megatiny.checkpoint.metadata import read_metadata
from megatiny.supervisor.events import read_events
from tests.helpers import free_port, run_command, venv_bin
from tests.multinode.conftest import start_two_hosts
from tests.multinode.test_train_two_hosts import (
    DEAD_PEER_TIMEOUT_S,
    FAULT_TRAIN,
    LAUNCH_TIMEOUT_S,
    TRAIN,
    _hostfile_launch,
    _latest,
    _losses,
    _of,
    _weights,
    _write_config,
    _write_corpus,
)

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

STEPS = 8
SAVE_INTERVAL = 4
KILL_AT_STEP = 6  # rank KILLED_RANK kills itself at the start of this step (one step after a save:
KILLED_RANK = 3   # by then rank 0 has finished writing the step-4 checkpoint)
LAYOUT = ("parallel.tensor=2", "runtime.precision=fp32", f"schedule.train_steps={STEPS}",
          f"checkpoint.save_interval={SAVE_INTERVAL}")


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
    save_dir = runs["root"] / "two_hosts"
    assert _latest(save_dir) == f"step_{STEPS:08d}" and (save_dir / f"step_{SAVE_INTERVAL:08d}").is_dir()
    world = read_metadata(save_dir / f"step_{STEPS:08d}")["train_state"].world
    assert (world.world_size, world.tensor_parallel_size) == (4, 2)


def _cpu_seconds() -> float:
    """CPU seconds every process of the machine has used so far (both hosts share its kernel)."""
    fields = open("/proc/stat").readline().split()[1:]
    busy = sum(int(v) for v in fields[:3]) + sum(int(v) for v in fields[5:8])  # not idle, not iowait
    return busy / os.sysconf("SC_CLK_TCK")


@pytest.fixture(scope="module")
def supervised(runs, two_hosts_two_slots):
    """The supervised run (see the module's docstring): its events and output, when the rank died,
    and what the run cost (wall and CPU seconds, load average)."""
    hosts, root = two_hosts_two_slots, runs["root"]
    save_dir, beats, fired = root / "supervised", root / "supervised_beats", root / "supervised_fired"
    config = _write_config(root / "supervised.yaml", root / "corpus_text_document", save_dir)
    env_file = root / "supervised_deepspeed_env"  # the ranks on host B write heartbeats too
    env_file.write_text(hosts.deepspeed_env_file.read_text() + f"MEGATINY_HEARTBEAT_DIR={beats}\n")
    job = ["deepspeed", "--hostfile", str(hosts.hostfile), "--master_addr", hosts.master_addr,
           "--master_port", str(free_port()), FAULT_TRAIN, "--kill-at-step", str(KILL_AT_STEP),
           "--fault-rank", str(KILLED_RANK), "--once", str(fired), "--config", str(config), *LAYOUT]
    started, cpu = time.monotonic(), _cpu_seconds()
    supervisor = hosts.popen_on([venv_bin("python"), "-m", "megatiny", "supervise", "--max-restarts", "1",
                                 "--hang-timeout", "60", "--heartbeat-dir", str(beats), "--", *job],
                                env={"DS_ENV_FILE": str(env_file)})
    try:
        output, _ = supervisor.communicate(timeout=2 * LAUNCH_TIMEOUT_S)  # two launches
    finally:
        if supervisor.poll() is None:  # the supervisor hung: end it and everything it started
            hosts.kill_all()
            supervisor.wait(timeout=30)
            hosts.restart_host(0)
            hosts.restart_host(1)
    cost = {"wall_s": time.monotonic() - started, "cpu_s": _cpu_seconds() - cpu, "load": os.getloadavg()}
    events = save_dir / "supervisor_events.jsonl"
    return {"returncode": supervisor.returncode, "output": output, "cost": cost, "save_dir": save_dir,
            "events": read_events(events) if events.exists() else [],
            # the --once marker is created just before the SIGKILL: its mtime is when the rank died
            "killed_at": os.stat(fired).st_mtime if fired.exists() else None}


def _left_running(hosts, host: int, wait_s: float = 10.0) -> list[str]:
    """The processes other than sshd still on `host` (a few seconds for ssh sessions to close)."""
    deadline = time.monotonic() + wait_s
    while True:
        left = []
        for pid in hosts.pids(host):
            try:
                name = open(f"/proc/{pid}/comm").read().strip()
            except OSError:
                continue
            if name != "sshd":
                left.append(f"{pid} {name}")
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)


def test_supervised_kill9_of_a_rank_on_host_b_relaunches_and_ends_bit_exact(supervised, runs,
                                                                          two_hosts_two_slots):
    import torch

    hosts, events, output = two_hosts_two_slots, supervised["events"], supervised["output"]
    assert supervised["returncode"] == 0, output[-8000:]
    killed_at = supervised["killed_at"]
    assert killed_at is not None, output[-8000:]
    launches, (fault,), (kill,), (restart,) = (_of(events, "launch"), _of(events, "fault"),
                                               _of(events, "kill"), _of(events, "restart"))
    assert len(launches) == 2 and _of(events, "finished"), output[-8000:]
    # The supervisor (on host A) cannot see host B's pids: the ranks that failed of the closed
    # connections report their errors, and rank 3, which reported nothing, is asked for over ssh.
    assert fault["kind"] in ("rank_died", "exited"), fault
    assert (fault["rank"], fault["host"], fault["step"]) == (KILLED_RANK, hosts.hosts[1].hostname,
                                                             KILL_AT_STEP), fault
    named = f"rank {KILLED_RANK} on host {hosts.hosts[1].hostname} (pid "
    died = f"died at step {KILL_AT_STEP} without reporting an error (checked over ssh)"
    assert named in fault["message"] and died in fault["message"], fault
    assert 0 <= fault["time"] - killed_at < DEAD_PEER_TIMEOUT_S, (killed_at, fault)
    # the job killed on both hosts: its process group on host A, host B's ranks over ssh (by the host
    # name their heartbeats give; the pids still alive there are listed, maybe none: host B's own
    # launcher ends its ranks as soon as one dies); nothing of launch 1 is left anywhere
    assert kill["problems"] == [] and list(kill["remote_killed"]) == [hosts.hosts[1].hostname], kill
    assert all(isinstance(pid, int) for pid in kill["remote_killed"][hosts.hosts[1].hostname]), kill
    assert _left_running(hosts, 0) == [] and _left_running(hosts, 1) == []
    # relaunched on both hosts within 60 s of the kill, from the step-4 checkpoint
    assert launches[1]["time"] - killed_at < 60, (killed_at, fault, launches)
    assert launches[1]["command"] == launches[0]["command"]
    assert restart["resume_step"] == launches[1]["checkpoint_step"] == SAVE_INTERVAL, (restart, launches)
    assert f"resumed from {supervised['save_dir'] / f'step_{SAVE_INTERVAL:08d}'}" in output, output[-8000:]
    # and it ends where the uninterrupted two-host run ends, bit for bit: every loss, the weights
    save_dir, reference_dir = supervised["save_dir"], runs["root"] / "two_hosts"
    losses, reference = _losses(save_dir / "metrics.jsonl"), _losses(reference_dir / "metrics.jsonl")
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert losses[STEPS] == reference[STEPS] and losses == reference, (losses, reference)
    tag = f"step_{STEPS:08d}"
    assert _latest(save_dir) == tag
    mine, theirs = _weights(save_dir / tag), _weights(reference_dir / tag)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    running, cost = _of(events, "running"), supervised["cost"]
    print(f"kill -9 of rank {KILLED_RANK} on host B at step {KILL_AT_STEP}: fault ({fault['message']}) "
          f"{fault['time'] - killed_at:.2f} s after; relaunched {launches[1]['time'] - fault['time']:.2f} s "
          f"after the fault; training again {running[-1]['time'] - fault['time']:.1f} s after; resumed from "
          f"step {restart['resume_step']}; killed over ssh {kill['remote_killed']}; the supervised run took "
          f"{cost['wall_s']:.1f} s wall, {cost['cpu_s']:.1f} CPU s, load average {cost['load']}")
