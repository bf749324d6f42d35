"""`megatiny supervise --allow-shrink`'s pure parts, in-process and without launches: the hostfile
in a launch command, reading and rewriting it, the ranks left, whether the run still fits them,
and the supervisor's decision before a relaunch when a host does not answer, and what it says of a
rank on such a host (a real `ssh` to an address where nothing listens). The shrink itself runs
in tests/multinode/test_train_two_hosts.py."""
from __future__ import annotations

import socket
import time

import pytest

from megatiny.heartbeat import Beat
from megatiny.supervisor.hosts import (
    JobHosts,
    ReturningHosts,
    find_host_launch,
    host_launch,
    parse_host_list,
    read_hostfile,
    shrink_problem,
    silent_hosts,
    write_hostfile,
)
from megatiny.supervisor.job import remote_states
from megatiny.supervisor.supervise import Options, Supervisor

DEAD = "127.0.0.1"  # nothing listens on port 22 here: ssh is refused at once


def _sizes(model_parallel: int = 1, micro: int = 2, total: int = 8) -> Beat:
    return Beat(0, 2, "h", 1, 3, "step", time.time(), "/ckpt", "auto", model_parallel, micro, total)


def test_the_hostfile_is_found_among_the_launcher_options_only(tmp_path):
    launch = find_host_launch(["deepspeed", "--hostfile", "h.txt", "--master_port", "1", "train.py",
                               "--hostfile", "not-this"])
    assert str(launch.path) == "h.txt"
    command, written = launch.with_hosts({"a": 2}, tmp_path / "new")
    assert command == ["deepspeed", "--hostfile", str(tmp_path / "new"), "--master_port", "1", "train.py",
                       "--hostfile", "not-this"]
    assert written == tmp_path / "new" and read_hostfile(written) == {"a": 2}
    short = find_host_launch(["/venv/bin/deepspeed", "-H=h.txt", "--num_gpus", "2", "train.py"])
    assert str(short.path) == "h.txt"
    assert short.with_hosts({"a": 1}, tmp_path / "n")[0][1] == f"-H={tmp_path / 'n'}"
    assert short.world_size({"a": 4, "b": 1}) == 3          # --num_gpus caps each host's slots
    assert find_host_launch(["deepspeed", "--num_gpus", "2", "train.py"]) is None
    assert find_host_launch(["python", "train.py", "--hostfile", "h.txt"]) is None
    assert find_host_launch(["deepspeed", "--hostfile", "h", "-i", "a:0", "t.py"]).selection == "-i"


def test_mpirun_host_lists_and_rank_counts_are_rewritten_together(tmp_path):
    command = ["mpirun", "--allow-run-as-root", "-np", "4", "-H", "a:2,b:1,b", "-x", "PATH",
               "/venv/bin/python", "tools/train.py", "--config", "run.yaml"]
    launch = find_host_launch(command)
    assert launch.inline and launch.path is None and launch.ranks == 4
    assert launch.hosts() == {"a": 2, "b": 2} and launch.describe() == "the host list a:2,b:1,b"
    shrunk, written = launch.with_hosts({"a": 2}, tmp_path / "unused")
    assert written is None and not (tmp_path / "unused").exists()
    assert shrunk == ["mpirun", "--allow-run-as-root", "-np", "2", "-H", "a:2", *command[6:]]
    assert launch.world_size({"a": 8}) == 4                 # never more ranks than the user's -np
    from_file = find_host_launch(["mpiexec", "--hostfile", "h.txt", "t.py"])
    assert str(from_file.path) == "h.txt" and from_file.ranks_index is None and from_file.ranks is None
    assert find_host_launch(["mpirun", "-rf", "ranks.txt", "-H", "a,b", "t.py"]).selection == "-rf"
    with pytest.raises(ValueError, match="'a:x' is not HOST or HOST:SLOTS"):
        parse_host_list("a:x,b")


def test_allow_shrink_refuses_commands_it_cannot_shrink(tmp_path):
    with pytest.raises(ValueError, match="needs a launch command that lists its hosts"):
        host_launch(["deepspeed", "--num_gpus", "2", "train.py"], allow_shrink=True)
    with pytest.raises(ValueError, match="needs a launch command that lists its hosts"):
        host_launch(["mpirun", "-np", "2", "train.py"], allow_shrink=True)
    with pytest.raises(ValueError, match="also picks hosts or places ranks with --exclude"):
        host_launch(["deepspeed", "--hostfile", "h", "--exclude", "b", "t.py"], allow_shrink=True)
    with pytest.raises(ValueError, match="cannot read the hostfile"):
        host_launch(["deepspeed", "--hostfile", str(tmp_path / "missing"), "t.py"], allow_shrink=True)
    with pytest.raises(ValueError, match="--allow-shrink needs"):  # the CLI's path: refused before a launch
        Supervisor(["python", "train.py"], Options(allow_shrink=True))
    assert host_launch(["python", "train.py"], allow_shrink=False) is None


def test_hostfiles_are_read_like_deepspeed_and_written_back(tmp_path):
    path = tmp_path / "hosts"
    path.write_text("# cluster\nnode1 slots=8\n\n  node2 slots=4\n")
    assert read_hostfile(path) == {"node1": 8, "node2": 4}
    assert read_hostfile(write_hostfile(tmp_path / "new", {"node2": 4})) == {"node2": 4}
    path.write_text("node1 slots=8\nnode1 slots=2\n")
    with pytest.raises(ValueError, match="line 2: 'node1 slots=2' is a second entry"):
        read_hostfile(path)
    path.write_text("node1 8\n")
    with pytest.raises(ValueError, match="line 1: 'node1 8' is not `HOST slots=N`"):
        read_hostfile(path)
    path.write_text("# nothing\n")
    with pytest.raises(ValueError, match="lists no host"):
        read_hostfile(path)


def test_a_shrunk_world_must_still_fit_the_layout_and_the_batch():
    assert shrink_problem(1, _sizes()) is None                     # 8 = 2 x 4 accumulation x 1
    assert shrink_problem(3, None) is None                         # nothing reported: the launch decides
    assert "no host is left" in shrink_problem(0, _sizes())
    assert "not a multiple of the run's tensor x pipeline x context size 2" in shrink_problem(3, _sizes(2))
    assert ("batch.global_batch_size 8 is not a multiple of batch.micro_batch_size x data-parallel size "
            "(2 x 3)") in shrink_problem(3, _sizes())


def test_a_host_that_does_not_answer_is_named(tmp_path):
    started = time.monotonic()
    silent = silent_hosts([DEAD, "no-such-host.invalid"], timeout_s=5)
    assert time.monotonic() - started < 5
    assert "Connection refused" in silent[DEAD] and "status 255" in silent[DEAD]
    assert set(silent) == {DEAD, "no-such-host.invalid"}


def test_ranks_of_a_host_that_does_not_answer_are_said_so():
    beats = [Beat(rank, 3, host, 100 + rank, 5, "step", 0.0) for rank, host in
             ((0, socket.gethostname()), (1, DEAD), (2, DEAD))]
    states = remote_states(beats, timeout_s=5)
    assert sorted(states) == [1, 2] and states[1] == states[2]    # this host's rank is not asked
    assert states[1].startswith("its host does not answer (ssh exited with status 255")
    assert "Connection refused" in states[1]


def _supervisor(tmp_path, allow_shrink: bool) -> Supervisor:
    hostfile = tmp_path / "hosts"
    hostfile.write_text(f"{DEAD} slots=1\n")
    command = ["deepspeed", "--hostfile", str(hostfile), "train.py"]
    return Supervisor(command, Options(allow_shrink=allow_shrink, save_dir=str(tmp_path / "ckpt"),
                                       host_timeout_s=2))


def test_before_a_relaunch_a_silent_host_is_a_reason_to_give_up(tmp_path):
    reason = _supervisor(tmp_path, allow_shrink=False)._check_hosts(2)
    assert f"host(s) {DEAD} of the hostfile {tmp_path / 'hosts'} do not answer" in reason
    assert "Connection refused" in reason and "--allow-shrink goes on without them" in reason
    shrinking = _supervisor(tmp_path, allow_shrink=True)
    reason = shrinking._check_hosts(2)
    assert "the run cannot go on without them: no host is left" in reason
    assert shrinking.command[2] == str(tmp_path / "hosts")         # unchanged: nothing to launch on
    assert not (tmp_path / "ckpt" / "supervisor_events.jsonl").exists()   # no shrink event


def test_a_dropped_host_that_answers_again_is_taken_back_when_the_run_can_use_it(tmp_path):
    user = write_hostfile(tmp_path / "hosts", {"a": 1, "b": 1, "c": 2})
    shrunk = write_hostfile(tmp_path / "shrunk", {"a": 1})
    hosts = JobHosts(find_host_launch(["deepspeed", "--hostfile", str(user), "t.py"]), True, 5)
    hosts.launch = find_host_launch(["deepspeed", "--hostfile", str(shrunk), "t.py"])  # as after a shrink
    assert hosts.missing() == ["b", "c"]
    # b answers again (c does not): 1 -> 2 ranks, a new hostfile in the command
    reason, change = hosts._resize({"a": 1}, {"a": 1, "b": 1}, {"c": "refused"}, tmp_path / "grown",
                                   _sizes(), 0.5)
    assert reason is None and change.event == "grow", change
    assert (change.fields["added"], change.fields["dropped"], change.fields["world_size"]) == (["b"], [], 2)
    assert "host(s) b answer again: relaunching on a, b, 1 -> 2 ranks" in change.message
    assert hosts.command[2] == str(tmp_path / "grown")
    assert read_hostfile(tmp_path / "grown") == {"a": 1, "b": 1}
    # c back too, but 4 ranks do not fit a tensor x pipeline x context size of 3: stays as it is
    assert hosts.grow_problem(["c"], _sizes(model_parallel=3)) is not None
    assert hosts._resize({"a": 1, "b": 1}, {"a": 1, "b": 1, "c": 2}, {}, tmp_path / "x", _sizes(3), 0.1) == \
        (None, None)
    # a host dropped that the run cannot do without: a reason to give up, naming it
    reason, change = hosts._resize({"a": 1, "b": 1}, {"a": 1}, {"b": "refused"}, tmp_path / "y",
                                   _sizes(2), 0.1)
    assert change is None and reason.startswith("host(s) b do not answer (b: refused), and the run cannot")


def test_returning_hosts_are_asked_in_the_background_and_a_silent_one_is_not_back():
    returning = ReturningHosts([DEAD], interval_s=0.01, timeout_s=2)
    deadline = time.monotonic() + 20
    asked = False
    while time.monotonic() < deadline:
        assert returning.answered() == []       # never waits for ssh: [] while a check runs
        asked = asked or returning.thread is not None
        if asked and returning.thread is None:  # a check ended
            break
        time.sleep(0.01)
    assert asked and DEAD in returning.silent and "Connection refused" in returning.silent[DEAD]
