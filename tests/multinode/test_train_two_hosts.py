"""`tools/train.py` across two hosts with `deepspeed --hostfile`: same losses as one host, exact
resume, and a host dying mid-run.

One chain of real runs (tiny-test model, ZeRO-3 + fp32, 2 ranks, 12 steps), shared by the tests:

  reference  `deepspeed --num_gpus 2` on one host (the root namespace), uninterrupted
  two_hosts  the same run launched from host A over pdsh/ssh, one rank per host
  killed     the same run on the two hosts; every process on host B is killed once a checkpoint
             exists; the launcher must fail fast, naming host B, with the checkpoint intact
  resumed    `checkpoint.resume=auto` on the two hosts continues the killed run to the last step
  single     the killed run's checkpoint resumed on host A alone (world size 1)
  mpirun     the reference run launched by Open MPI's mpirun across the two hosts instead, under
             `megatiny supervise --allow-shrink`; host B killed for good after step 8: relaunched
             by mpirun on host A alone
  supervised `megatiny supervise --allow-shrink` of the run on the two hosts: rank 0 kills itself
             (kill -9) at step 5, the job is killed (rank 1 over ssh) and relaunched on both hosts;
             once that launch has saved step 8, host B is killed for good and the supervisor
             relaunches on host A alone (1 rank, 4 micro-batches of accumulation instead of 2);
             then host B is brought back, the supervisor notices, the job saves and stops at the
             end of its step and is relaunched on both hosts again
             (the same kill -9 with 4 ranks, two per host: test_tensor_parallel_two_hosts.py)

fp32 (not `auto`, which is bf16 on this CPU): the runs on fewer ranks sum the same samples in
another order, and only in fp32 is that close enough (1e-5 relative) to check the shrink's losses.

and, separately, a host that vanishes from the network (no connection reset) under the supervisor:
only `distributed.timeout_s` can notice it; the supervisor names it and goes on without it.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from megatiny.heartbeat import read_beats
from megatiny.supervisor.events import read_events
from tests.helpers import free_port, rank_env, run_command, timeout_s, venv_bin
from tests.multinode.harness import TwoHosts

pytestmark = [pytest.mark.slow, pytest.mark.multinode]

TRAIN = "tools/train.py"
FAULT_TRAIN = "tests/training/fault_train.py"
KILL_AT_STEP = 5      # the supervised run's rank 0 kills itself at the start of this step
HOST_LOST_AFTER = 8   # ... and host B dies for good once the relaunched job has saved this step
STEPS = 12
DEAD_PEER_TIMEOUT_S = 30  # distributed.timeout_s of these runs
LAUNCH_TIMEOUT_S = timeout_s(steps=12, seconds_per_step=4, extra_s=60)


def _write_corpus(prefix: Path, vocab: int = 512, documents: int = 300) -> None:
    """Documents of arithmetic token sequences (learnable, deterministic), as an indexed dataset."""
    from megatiny.data.indexed_dataset import IndexedDatasetBuilder

    rng = np.random.default_rng(0)
    with IndexedDatasetBuilder(prefix, dtype=np.uint16) as builder:
        for _ in range(documents):
            start, stride, length = rng.integers(3, vocab), rng.integers(1, 7), rng.integers(20, 120)
            tokens = 3 + (start + stride * np.arange(length)) % (vocab - 3)
            builder.add_document(np.append(tokens, 2).astype(np.int64))


def _write_config(path: Path, prefix: Path, save_dir: Path) -> Path:
    config = {
        "model": {"preset": "tiny-test"},
        "tokenizer": None,
        "data": {"data_path": str(prefix), "split": "100,0,0"},
        "batch": {"seq_length": 32, "micro_batch_size": 2, "global_batch_size": 8},
        "optimizer": {"lr": 3e-3, "min_lr": 3e-4, "cpu_adam": False},
        "schedule": {"train_steps": STEPS, "warmup_steps": 2},
        "checkpoint": {"save_dir": str(save_dir), "save_interval": 2, "resume": "auto"},
        "logging": {"log_interval": 1, "eval_interval": 0, "tensorboard": False},
        "runtime": {"precision": "fp32"},
        "distributed": {"deepspeed_config": "ds_configs/zero3.json", "timeout_s": DEAD_PEER_TIMEOUT_S},
        "seed": 1234,
    }
    path.write_text(yaml.safe_dump(config))
    return path


def _losses(metrics_file: Path) -> dict[int, float]:
    """step -> training loss from a metrics.jsonl (the last record of a step wins)."""
    losses = {}
    for line in metrics_file.read_text().splitlines():
        record = json.loads(line)
        if record.get("loss") is not None:
            losses[record["step"]] = record["loss"]
    return losses


def _hostfile_launch(hosts: TwoHosts, config: Path, *overrides: str) -> list[str]:
    return ["deepspeed", "--hostfile", str(hosts.hostfile), "--master_addr", hosts.master_addr,
            "--master_port", str(free_port()), TRAIN, "--config", str(config), *overrides]


def _latest(save_dir: Path) -> str | None:
    path = save_dir / "latest"
    return path.read_text().strip() if path.is_file() else None


@pytest.fixture(scope="module")
def runs(two_hosts, tmp_path_factory):
    """Runs the whole chain once; each test then checks one part of it."""
    root = tmp_path_factory.mktemp("train_two_hosts")
    prefix = root / "corpus_text_document"
    _write_corpus(prefix)
    out: dict = {"root": root}

    # 2 ranks on one host, launched the usual way
    cfg = _write_config(root / "reference.yaml", prefix, root / "reference")
    launch = [venv_bin("deepspeed"), "--num_gpus", "2", "--master_port", str(free_port())]
    out["reference"] = run_command([*launch, TRAIN, "--config", str(cfg)], timeout=LAUNCH_TIMEOUT_S)

    cfg = _write_config(root / "two_hosts.yaml", prefix, root / "two_hosts")
    out["two_hosts"] = two_hosts.run_on(_hostfile_launch(two_hosts, cfg), timeout=LAUNCH_TIMEOUT_S)

    cfg = _write_config(root / "killed.yaml", prefix, root / "killed")
    out["killed"] = _kill_host_b_mid_run(two_hosts, cfg, root / "killed")
    two_hosts.restart_host(1)  # the failed machine is back (or replaced, same address)
    out["resumed"] = two_hosts.run_on(
        _hostfile_launch(two_hosts, root / "killed.yaml", f"logging.metrics_file={root / 'resumed.jsonl'}"),
        timeout=LAUNCH_TIMEOUT_S)

    # host B is gone: host A alone resumes the checkpoint that survived the kill, into a new dir
    tag_dir = root / "killed" / out["killed"]["latest_after"]
    out["single"] = two_hosts.run_on(
        [venv_bin("python"), TRAIN, "--config", str(root / "killed.yaml"), f"checkpoint.resume={tag_dir}",
         f"checkpoint.save_dir={root / 'single'}"], timeout=LAUNCH_TIMEOUT_S)
    return out


def _end_and_restore_hosts(hosts: TwoHosts, process) -> None:
    """After a test that broke host B: if `process` (launched on host A) hung, kill everything on
    host A and bring it back; then bring host B back for the next test."""
    if process.poll() is None:
        hosts.kill_host(0)
        process.wait(timeout=30)
        hosts.restart_host(0)
    hosts.restart_host(1)


def _kill_host_b_mid_run(hosts: TwoHosts, config: Path, save_dir: Path) -> dict:
    """Start a two-host run; once a checkpoint is complete, freeze host B (so the run cannot
    finish meanwhile), then SIGKILL everything on it. Returns what the launcher did."""
    launcher = hosts.popen_on(_hostfile_launch(hosts, config))
    deadline = time.monotonic() + LAUNCH_TIMEOUT_S
    while _latest(save_dir) is None and launcher.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    hosts.freeze_host(1)
    latest_at_kill = _latest(save_dir)
    hosts.kill_host(1)
    killed_at = time.monotonic()
    try:
        output, _ = launcher.communicate(timeout=LAUNCH_TIMEOUT_S)
    except Exception:
        hosts.kill_host(0)
        output, _ = launcher.communicate(timeout=30)
        output += "\n[test] launcher did not exit; host A killed\n"
    seconds = time.monotonic() - killed_at
    return {"returncode": launcher.returncode, "output": output, "seconds_to_exit": seconds,
            "latest_at_kill": latest_at_kill, "latest_after": _latest(save_dir)}


def test_two_hosts_train_and_both_exit_zero(runs, two_hosts):
    result = runs["two_hosts"]
    assert result.returncode == 0, result.stdout[-8000:]
    for host in two_hosts.hosts:  # exactly one rank ran, and finished, on each host
        finished = [line for line in result.stdout.splitlines()
                    if line.startswith(f"{host.address}: ") and "exits successfully" in line]
        assert len(finished) == 1, result.stdout[-8000:]
    assert "| 2 ranks |" in result.stdout
    assert _latest(runs["root"] / "two_hosts") == f"step_{STEPS:08d}"


def test_two_hosts_losses_equal_one_host_run(runs):
    assert runs["reference"].returncode == 0, runs["reference"].stdout[-8000:]
    reference = _losses(runs["root"] / "reference" / "metrics.jsonl")
    two_hosts = _losses(runs["root"] / "two_hosts" / "metrics.jsonl")
    assert sorted(reference) == list(range(1, STEPS + 1))
    assert two_hosts == reference
    assert reference[STEPS] < reference[1]  # and it is really learning


def test_dead_host_fails_the_launcher_quickly_naming_it(runs, two_hosts):
    killed = runs["killed"]
    assert killed["latest_at_kill"] is not None, killed["output"][-8000:]
    assert killed["returncode"] != 0, killed["output"][-8000:]
    # the kernel of the dead host resets its connections: noticed at once, well before timeout_s
    assert killed["seconds_to_exit"] < DEAD_PEER_TIMEOUT_S, killed["output"][-8000:]
    dead = two_hosts.hosts[1].address
    # pdsh reports the lost host; the surviving rank's error names its peer's address
    assert f"{dead}: ssh exited with exit code" in killed["output"], killed["output"][-8000:]
    assert f"[{dead}]" in killed["output"], killed["output"][-8000:]


def test_checkpoint_complete_before_the_kill_is_intact(runs):
    from megatiny.checkpoint import load_model
    from megatiny.checkpoint.metadata import read_metadata

    killed = runs["killed"]
    tag = killed["latest_after"]
    assert tag is not None and tag >= killed["latest_at_kill"]
    tag_dir = runs["root"] / "killed" / tag
    meta = read_metadata(tag_dir)
    assert meta["step"] == int(tag.split("_")[1]) and meta["step"] < STEPS
    model, _ = load_model(tag_dir)
    assert all(math.isfinite(p.float().abs().sum().item()) for p in model.parameters())


def test_resume_auto_on_two_hosts_continues_exactly(runs):
    resumed = runs["resumed"]
    assert resumed.returncode == 0, resumed.stdout[-8000:]
    step = int(runs["killed"]["latest_after"].split("_")[1])
    assert f"resumed from {runs['root'] / 'killed' / runs['killed']['latest_after']}" in resumed.stdout
    reference = _losses(runs["root"] / "reference" / "metrics.jsonl")
    losses = _losses(runs["root"] / "resumed.jsonl")
    assert sorted(losses) == list(range(step + 1, STEPS + 1))
    assert losses == {s: reference[s] for s in losses}
    assert _latest(runs["root"] / "killed") == f"step_{STEPS:08d}"


def test_resume_on_one_host_with_world_size_one(runs):
    single = runs["single"]
    assert single.returncode == 0, single.stdout[-8000:]
    assert "| 1 ranks |" in single.stdout
    step = int(runs["killed"]["latest_after"].split("_")[1])
    reference = _losses(runs["root"] / "reference" / "metrics.jsonl")
    losses = _losses(runs["root"] / "single" / "metrics.jsonl")
    assert sorted(losses) == list(range(step + 1, STEPS + 1))
    # same samples in each step, summed in a different order (4 micro-batches on 1 rank, not 2 x 2)
    for s, loss in losses.items():
        assert loss == pytest.approx(reference[s], rel=1e-5), (s, losses, reference)


@pytest.fixture(scope="module")
def supervised_mpirun(runs, two_hosts):
    """The reference run launched by Open MPI's mpirun across the two hosts (`-np 2 -H A:1,B:1`)
    under `megatiny supervise --allow-shrink`; host B killed for good once step 8 is saved."""
    if not shutil.which("mpirun"):
        pytest.skip("Open MPI's mpirun is not installed")
    root = runs["root"]
    save_dir, beats = root / "mpirun", root / "mpirun_beats"
    slots = ",".join(f"{h.address}:1" for h in two_hosts.hosts)
    job = ["mpirun", "--allow-run-as-root", "-np", "2", "-H", slots,
           "-x", "PATH", "-x", "GLOO_SOCKET_IFNAME=mt0", "-x", "OMP_NUM_THREADS=1",
           "-x", "MEGATINY_HEARTBEAT_DIR",  # set by the supervisor
           *[arg for key in rank_env() for arg in ("-x", key)],
           "--mca", "btl_tcp_if_include", "mt0", "--mca", "oob_tcp_if_include", "mt0",
           venv_bin("python"), TRAIN, "--config", str(root / "reference.yaml"),
           f"checkpoint.save_dir={save_dir}", f"distributed.master_port={free_port()}"]
    supervisor = two_hosts.popen_on([venv_bin("python"), "-m", "megatiny", "supervise", "--allow-shrink",
                                     "--max-restarts", "1", "--host-timeout", "5",
                                     "--heartbeat-dir", str(beats), "--", *job])
    try:
        _kill_host_b_after(two_hosts, supervisor, save_dir, beats)
        output, _ = supervisor.communicate(timeout=2 * LAUNCH_TIMEOUT_S)
    finally:
        _end_and_restore_hosts(two_hosts, supervisor)
    events = read_events(save_dir / "supervisor_events.jsonl")
    return {"returncode": supervisor.returncode, "output": output, "events": events, "save_dir": save_dir}


def test_mpirun_across_two_hosts_matches_the_reference_and_shrinks_under_the_supervisor(
        supervised_mpirun, runs, two_hosts):
    output, events = supervised_mpirun["output"], supervised_mpirun["events"]
    assert supervised_mpirun["returncode"] == 0, output[-8000:]
    assert "| 2 ranks |" in output and "| 1 ranks |" in output
    # rank 1's host is gone: rank 0 failed of it and rank 1 is named
    fault, = _of(events, "fault")
    assert (fault["rank"], fault["host"]) == (1, two_hosts.hosts[1].hostname), fault
    # relaunched by mpirun on host A alone: host list and rank count rewritten together
    shrink, = _of(events, "shrink")
    host_a, host_b = two_hosts.hosts[0].address, two_hosts.hosts[1].address
    assert shrink["dropped"] == [host_b] and shrink["hostfile"] is None, shrink
    command = _of(events, "launch")[1]["command"]
    assert command[command.index("-np") + 1] == "1" and command[command.index("-H") + 1] == f"{host_a}:1"
    resumed = _of(events, "restart")[0]["resume_step"]
    reference = _losses(runs["root"] / "reference" / "metrics.jsonl")
    losses = _losses(supervised_mpirun["save_dir"] / "metrics.jsonl")
    assert sorted(losses) == list(range(1, STEPS + 1)) and resumed >= HOST_LOST_AFTER
    assert {s: losses[s] for s in range(1, resumed + 1)} == {s: reference[s] for s in range(1, resumed + 1)}
    for s in range(resumed + 1, STEPS + 1):  # fp32: the same samples on one rank
        assert losses[s] == pytest.approx(reference[s], rel=1e-5), (s, losses[s], reference[s])
    print(f"mpirun, host B lost: fault ({fault['kind']}: {fault['message'][:160]}); relaunched "
          f"{_of(events, 'launch')[1]['time'] - fault['time']:.2f} s after, from step {resumed}")


@pytest.fixture(scope="module")
def supervised(runs, two_hosts):
    """The supervised run (see the module's docstring): its events, output and the moment host B died."""
    root = runs["root"]
    save_dir, beats = root / "supervised", root / "supervised_beats"
    config = _write_config(root / "supervised.yaml", root / "corpus_text_document", save_dir)
    env_file = root / "supervised_deepspeed_env"  # the ranks on host B write heartbeats too
    env_file.write_text(two_hosts.deepspeed_env_file.read_text() + f"MEGATINY_HEARTBEAT_DIR={beats}\n")
    job = ["deepspeed", "--hostfile", str(two_hosts.hostfile), "--master_addr", two_hosts.master_addr,
           "--master_port", str(free_port()), FAULT_TRAIN, "--kill-at-step", str(KILL_AT_STEP),
           "--fault-rank", "0", "--once", str(root / "supervised_fired"), "--config", str(config)]
    supervisor = two_hosts.popen_on([venv_bin("python"), "-m", "megatiny", "supervise", "--allow-shrink",
                                     "--max-restarts", "2", "--hang-timeout", "60", "--host-timeout", "5",
                                     "--regrow-interval", "1", "--heartbeat-dir", str(beats), "--", *job],
                                    env={"DS_ENV_FILE": str(env_file)})
    try:
        lost = _kill_host_b_after(two_hosts, supervisor, save_dir, beats)
        back = _bring_host_b_back_after_the_shrink(two_hosts, supervisor, save_dir)
        output, _ = supervisor.communicate(timeout=2 * LAUNCH_TIMEOUT_S)
    finally:
        _end_and_restore_hosts(two_hosts, supervisor)
    events = read_events(save_dir / "supervisor_events.jsonl")
    return {"returncode": supervisor.returncode, "output": output, "events": events, "lost": lost,
            "back": back, "save_dir": save_dir}


def _kill_host_b_after(hosts: TwoHosts, supervisor, save_dir: Path, beats: Path) -> dict:
    """Once the relaunched job has saved step HOST_LOST_AFTER, freeze host B and kill everything on
    it (sshd too: it answers no more). When, and the step each rank had reached."""
    deadline = time.monotonic() + 2 * LAUNCH_TIMEOUT_S
    while ((_latest(save_dir) or "") < f"step_{HOST_LOST_AFTER:08d}" and supervisor.poll() is None
           and time.monotonic() < deadline):
        time.sleep(0.02)
    hosts.freeze_host(1)
    steps = {rank: beat.step for rank, beat in read_beats(beats).items()}
    hosts.kill_host(1)
    return {"time": time.time(), "latest": _latest(save_dir), "steps": steps}


def _bring_host_b_back_after_the_shrink(hosts: TwoHosts, supervisor, save_dir: Path) -> dict:
    """Once the supervisor has relaunched on host A alone (launch 3), restart host B's sshd. When it
    was started (the supervisor may see it answer before `restart_host` has seen it too)."""
    events, deadline = save_dir / "supervisor_events.jsonl", time.monotonic() + LAUNCH_TIMEOUT_S
    while (supervisor.poll() is None and time.monotonic() < deadline
           and not any(e["event"] == "launch" and e["launch"] == 3 for e in read_events(events))):
        time.sleep(0.05)
    started = time.time()
    hosts.restart_host(1)
    return {"time": started}


def _of(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["event"] == kind]


def _weights(tag_dir: Path) -> dict:
    from megatiny.checkpoint import load_model

    model, _ = load_model(tag_dir)
    return {name: p.detach().clone() for name, p in model.named_parameters()}


def test_supervised_kill9_across_two_hosts_relaunches_and_continues_exactly(supervised, runs, two_hosts):
    import torch

    events = supervised["events"]
    assert len(_of(events, "launch")) >= 2, supervised["output"][-8000:]
    fault, kill = _of(events, "fault")[0], _of(events, "kill")[0]
    # rank 0's pid vanished (or, if it noticed first, the launcher exited): rank 0 on host A is named,
    # not rank 1 on host B that failed of it
    assert fault["kind"] in ("rank_died", "exited") and f"step {KILL_AT_STEP}" in fault["message"], fault
    host_a = two_hosts.hosts[0].hostname
    assert (fault["rank"], fault["host"], fault["step"]) == (0, host_a, KILL_AT_STEP), fault
    # rank 1 on host B killed over ssh (by the hostname its heartbeat gives), the pids that were alive
    assert kill["problems"] == [] and list(kill["remote_killed"]) == [two_hosts.hosts[1].hostname], kill
    restart = _of(events, "restart")[0]
    assert restart["resume_step"] == KILL_AT_STEP - 1 and _of(events, "launch")[1]["launch"] == 2
    # the relaunched job on both hosts: every loss and the checkpoint the shrink resumes from equal the
    # uninterrupted run's, bit for bit
    shrunk_from = _of(events, "restart")[1]["resume_step"]
    assert shrunk_from >= HOST_LOST_AFTER, events
    reference = _losses(runs["root"] / "reference" / "metrics.jsonl")
    losses = _losses(supervised["save_dir"] / "metrics.jsonl")
    before_shrink = range(1, shrunk_from + 1)
    assert {s: losses[s] for s in before_shrink} == {s: reference[s] for s in before_shrink}
    tag = f"step_{shrunk_from:08d}"
    mine, theirs = _weights(supervised["save_dir"] / tag), _weights(runs["root"] / "reference" / tag)
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    launch = _of(events, "launch")[1]
    print(f"kill -9 across hosts: detected {fault['last_beat_age_s']} s after the rank's last heartbeat; "
          f"relaunched {launch['time'] - fault['time']:.2f} s after; killed over ssh {kill['remote_killed']}")


def test_allow_shrink_continues_on_host_a_with_the_same_global_batch(supervised, runs, two_hosts):
    events, output = supervised["events"], supervised["output"]
    assert supervised["returncode"] == 0, output[-8000:]
    shrink, = _of(events, "shrink")
    dead, alive = two_hosts.hosts[1].address, two_hosts.hosts[0].address
    assert shrink["dropped"] == [dead] and shrink["hosts"] == [alive], shrink
    assert (shrink["world_size_before"], shrink["world_size"]) == (2, 1)
    assert Path(shrink["hostfile"]).read_text() == f"{alive} slots=1\n"
    launches = _of(events, "launch")
    assert len(launches) == 4 and launches[2]["command"][2] == shrink["hostfile"]
    assert "global batch 8 = 2 micro x 4 accumulation x 1 data-parallel ranks" in output
    assert _of(events, "finished") and _latest(supervised["save_dir"]) == f"step_{STEPS:08d}"
    resumed = _of(events, "restart")[1]["resume_step"]
    reference = _losses(runs["root"] / "reference" / "metrics.jsonl")
    losses = _losses(supervised["save_dir"] / "metrics.jsonl")
    assert sorted(losses) == list(range(1, STEPS + 1))
    for s in range(resumed + 1, STEPS + 1):  # fp32: the same samples, summed in another order
        assert losses[s] == pytest.approx(reference[s], rel=1e-5), (s, losses[s], reference[s])
    fault = _of(events, "fault")[1]
    lost = supervised["lost"]
    # host A's rank failed on the lost connection; host B's rank, gone with its host, is named
    assert fault["kind"] in ("rank_died", "exited") and fault["rank"] == 1, fault
    assert fault["host"] == two_hosts.hosts[1].hostname, fault
    assert "went silent at step" in fault["message"] and "its host does not answer" in fault["message"], fault
    print(f"host B lost: fault {fault['time'] - lost['time']:.2f} s after the kill ({fault['kind']}); hosts "
          f"checked in {shrink['check_s']} s; relaunched {launches[2]['time'] - fault['time']:.2f} s "
          f"after the fault; training again {_of(events, 'running')[2]['time'] - fault['time']:.1f} s after; "
          f"steps reached {lost['steps']}, resumed from step {resumed}")


def test_a_host_that_answers_again_is_taken_back(supervised, two_hosts):
    events, output = supervised["events"], supervised["output"]
    assert supervised["returncode"] == 0, output[-8000:]
    host_a, host_b = two_hosts.hosts[0].address, two_hosts.hosts[1].address
    regrow, = _of(events, "regrow")
    grow, = _of(events, "grow")
    assert regrow["hosts"] == [host_b] and regrow["time"] > supervised["back"]["time"], (regrow, supervised)
    # the job on host A saved at the end of its step and exited 0 (no fault); relaunched on both hosts
    stopped_at = _of(events, "restart")[2]["resume_step"]
    assert len(_of(events, "fault")) == 2, events
    assert f"stop requested (the supervisor's request): saving a checkpoint at step {stopped_at}" in output
    assert (grow["added"], grow["dropped"], grow["hosts"]) == ([host_b], [], [host_a, host_b]), grow
    assert (grow["world_size_before"], grow["world_size"]) == (1, 2)
    assert Path(grow["hostfile"]).read_text() == f"{host_a} slots=1\n{host_b} slots=1\n"
    launches = _of(events, "launch")
    assert launches[3]["command"][2] == grow["hostfile"] and launches[3]["checkpoint_step"] == stopped_at
    assert stopped_at < STEPS and _of(events, "finished")[0]["launch"] == 4, events
    # (its losses after the regrow are checked with the shrink's, against the uninterrupted run)
    two_ranks = "global batch 8 = 2 micro x 2 accumulation x 2 data-parallel ranks"
    assert output.count(two_ranks) == 3, output[-8000:]   # launches 1, 2 and 4
    print(f"host B back: noticed {regrow['time'] - supervised['back']['time']:.2f} s after its sshd was "
          f"started again; the job saved step {stopped_at} and stopped; relaunched on both hosts "
          f"{launches[3]['time'] - regrow['time']:.2f} s after the regrow event; training again "
          f"{_of(events, 'running')[3]['time'] - regrow['time']:.1f} s after it")


def test_vanished_host_is_named_after_the_distributed_timeout_and_left_out(two_hosts, runs):
    """Host B vanishes from the network (frozen, link down: no connection is reset) under the
    supervisor with --allow-shrink: rank 0's collective times out, rank 1 reported nothing and
    its host does not answer ssh, so rank 1 on host B is named; the job goes on on host A alone."""
    timeout_s, root = 10, runs["root"]
    save_dir, beats = root / "vanished", root / "vanished_beats"
    env_file = root / "vanished_deepspeed_env"
    env_file.write_text(two_hosts.deepspeed_env_file.read_text() + f"MEGATINY_HEARTBEAT_DIR={beats}\n")
    job = _hostfile_launch(two_hosts, root / "reference.yaml", f"checkpoint.save_dir={save_dir}",
                           f"distributed.timeout_s={timeout_s}")
    supervisor = two_hosts.popen_on([venv_bin("python"), "-m", "megatiny", "supervise", "--allow-shrink",
                                     "--max-restarts", "1", "--host-timeout", "3",
                                     "--heartbeat-dir", str(beats), "--", *job],
                                    env={"DS_ENV_FILE": str(env_file)})
    try:
        deadline = time.monotonic() + LAUNCH_TIMEOUT_S
        while _latest(save_dir) is None and supervisor.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        two_hosts.unplug_host(1)
        unplugged_at = time.time()
        output, _ = supervisor.communicate(timeout=2 * LAUNCH_TIMEOUT_S)
    finally:
        _end_and_restore_hosts(two_hosts, supervisor)
    assert supervisor.returncode == 0, output[-8000:]
    events = read_events(save_dir / "supervisor_events.jsonl")
    fault, kill, shrink = _of(events, "fault")[0], _of(events, "kill")[0], _of(events, "shrink")[0]
    host_b = two_hosts.hosts[1]
    # noticed through the distributed timeout (rank 0's error), not before
    assert timeout_s <= fault["time"] - unplugged_at < timeout_s + 30, (fault, unplugged_at)
    assert f"Timed out waiting {timeout_s * 1000}ms" in fault["message"], fault
    assert (fault["kind"], fault["rank"], fault["host"]) == ("rank_died", 1, host_b.hostname), fault
    assert "went silent at step" in fault["message"] and "its host does not answer" in fault["message"]
    # not waited for again to kill it; left out of the relaunch; the run ends on host A
    assert kill["problems"] and all("the host did not answer just before" in p for p in kill["problems"])
    assert shrink["dropped"] == [host_b.address] and len(_of(events, "launch")) == 2
    assert _latest(save_dir) == f"step_{STEPS:08d}"
    resumed = _of(events, "restart")[0]["resume_step"]
    reference, losses = _losses(root / "reference" / "metrics.jsonl"), _losses(save_dir / "metrics.jsonl")
    for s in range(resumed + 1, STEPS + 1):  # fp32: the same samples on one rank
        assert losses[s] == pytest.approx(reference[s], rel=1e-5), (s, losses[s], reference[s])
    relaunched = _of(events, "launch")[1]["time"] - fault["time"]
    print(f"host B unplugged: fault {fault['time'] - unplugged_at:.2f} s after (distributed.timeout_s "
          f"{timeout_s}); killed {kill['time'] - fault['time']:.2f} s after the fault; hosts checked in "
          f"{shrink['check_s']} s; relaunched on host A {relaunched:.2f} s after the fault, from step "
          f"{resumed}")
