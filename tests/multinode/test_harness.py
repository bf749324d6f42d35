"""The two-host harness itself: real sshd's in two namespaces, reached by pdsh, torn down cleanly."""
from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.helpers import free_port
from tests.multinode.conftest import start_two_hosts
from tests.multinode.harness import ETC_NETNS

pytestmark = [pytest.mark.slow, pytest.mark.multinode]


def _namespaces() -> str:
    return subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, text=True, timeout=30).stdout


def test_pdsh_reaches_both_hosts_each_with_its_own_address_and_hostname(two_hosts):
    result = two_hosts.run_on(
        ["pdsh", "-S", "-w", ",".join(h.address for h in two_hosts.hosts),
         "echo name=$(hostname) addrs=$(hostname -I)"],
        timeout=60)
    assert result.returncode == 0, result.stdout
    for host in two_hosts.hosts:
        # pdsh prefixes each line with the host it came from; each host owns exactly its address
        lines = [line for line in result.stdout.splitlines() if line.startswith(f"{host.address}:")]
        assert lines == [f"{host.address}: name={host.hostname} addrs={host.address}"], result.stdout
    peer = two_hosts.run_on(["getent", "hosts", two_hosts.hosts[1].hostname], timeout=30)
    assert peer.stdout.split() == [two_hosts.hosts[1].address, two_hosts.hosts[1].hostname], peer.stdout
    assert two_hosts.hostfile.read_text() == "10.77.0.1 slots=1\n10.77.0.2 slots=1\n"


def test_deepspeed_hostfile_launch_trains_zero3_across_two_hosts(two_hosts, tmp_path):
    result = two_hosts.run_on(
        ["deepspeed", "--hostfile", str(two_hosts.hostfile), "--master_addr", two_hosts.master_addr,
         "--master_port", str(free_port()), "tests/foundation/zero3_tiny_module.py",
         "--out-dir", str(tmp_path), "--steps", "10"],
        timeout=240)
    assert result.returncode == 0, result.stdout[-6000:]
    assert "nnodes=2" in result.stdout
    for host in two_hosts.hosts:  # one rank ran, and finished, on each host
        finished = [line for line in result.stdout.splitlines()
                    if line.startswith(f"{host.address}: ") and "exits successfully" in line]
        assert len(finished) == 1, result.stdout[-6000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert all(len(r["losses"]) == 10 for r in ranks)


def test_teardown_kills_leftover_processes_and_removes_namespaces(tmp_path):
    hosts = start_two_hosts(tmp_path)
    names = [h.namespace for h in hosts.hosts]
    try:
        sleeper = hosts.popen_on(["sleep", "300"], host=1)
        deadline = time.monotonic() + 10  # `ip netns exec` enters the namespace after it started
        while sleeper.pid not in hosts.pids(1) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sleeper.pid in hosts.pids(1)
        assert all(name in _namespaces() for name in names)
    finally:
        hosts.stop()
    assert sleeper.wait(timeout=10) != 0  # killed, not finished
    assert not any(name in _namespaces() for name in names)
    assert not any((Path(ETC_NETNS) / name).exists() for name in names)
    hosts.stop()  # idempotent


def test_not_root_is_a_clear_skip_reason(monkeypatch):
    from tests.multinode import harness

    monkeypatch.setattr(harness.os, "geteuid", lambda: 1000)
    assert "need root" in harness.unavailable_reason()
    with pytest.raises(harness.HarnessUnavailable, match="need root"):
        harness.TwoHosts(Path("/nonexistent")).start()


def test_namespaces_left_by_a_killed_run_are_removed_on_the_next_start(tmp_path):
    from tests.multinode.harness import _namespace_pids, remove_stale_namespaces, unavailable_reason

    if unavailable_reason():
        pytest.skip(unavailable_reason())
    dead = subprocess.Popen(["true"])
    dead.wait(timeout=30)
    stale = f"mt{dead.pid}x1a"
    subprocess.run(["ip", "netns", "add", stale], check=True, timeout=30)
    (Path(ETC_NETNS) / stale).mkdir(parents=True)
    leftover = subprocess.Popen(["ip", "netns", "exec", stale, "sleep", "300"])
    try:
        deadline = time.monotonic() + 10
        while leftover.pid not in _namespace_pids(stale) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert leftover.pid in _namespace_pids(stale)
        assert stale in remove_stale_namespaces()
        assert leftover.wait(timeout=10) != 0
        assert stale not in _namespaces() and not (Path(ETC_NETNS) / stale).exists()
    finally:
        leftover.kill()
        subprocess.run(["ip", "netns", "del", stale], stderr=subprocess.DEVNULL, timeout=30)
