"""Two "hosts" on one machine: network namespaces linked by a veth pair, each running its own sshd.

The DeepSpeed multi-node launcher (`deepspeed --hostfile H`) reaches every host listed in the
hostfile through pdsh + ssh. This harness builds exactly that situation on a single root-capable
machine so it can be tested for real:

    namespace A (10.77.0.1/24, iface mt0, sshd)  <== veth ==>  namespace B (10.77.0.2/24, iface mt0, sshd)

Both namespaces share the machine's filesystem, so the venv and the repository are at the same path
on both "hosts" (as with a shared filesystem on a cluster). Nothing outside the two namespaces gets an
address, and ssh uses a private config (keys, known_hosts) in the harness's work directory; ~/.ssh
is never touched. `launch_env()` returns the environment the launcher needs (run it inside host A
with `popen_on`/`run_on`); `kill_host()` simulates a host dying.

Command line (as root), for trying the launcher by hand::

    python -m tests.multinode.harness                 # smoke test: tiny ZeRO-3 model across two hosts
    python -m tests.multinode.harness -- CMD ARGS...  # run CMD on host A; $MT_HOSTFILE, $MT_MASTER_ADDR set
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from megatiny.process_env import path_with_interpreter_bin
from tests.helpers import free_port, rank_env

REPO_ROOT = Path(__file__).resolve().parents[2]
IFNAME = "mt0"  # same interface name in both namespaces, so one GLOO_SOCKET_IFNAME fits every rank
SUBNET_PREFIX = "10.77.0."
ETC_NETNS = "/etc/netns"  # per-namespace overrides of /etc files, applied by `ip netns exec`
IP_TIMEOUT_S = 30.0  # an `ip netns` command; none should take more than a second
REQUIRED_TOOLS = ("ip", "unshare", "sshd", "ssh", "ssh-keygen", "pdsh")


NAMESPACE_PATTERN = re.compile(r"^mt(\d+)x\d+[ab]$")  # mt{owner pid}x{millis}{a|b}


class HarnessUnavailable(RuntimeError):
    """This machine cannot host the two namespaces (not root, tools missing, no netns support)."""


def _sh(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"`{shlex.join(cmd)}` failed ({result.returncode}): {result.stdout.strip()}")
    return result


def unavailable_reason() -> str | None:
    """Why the harness cannot run here, or None if it can (root + iproute2, sshd, ssh, pdsh)."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "network namespaces need root (run the multinode tests as root, as CI does)"
    missing = [tool for tool in REQUIRED_TOOLS if _which(tool) is None]
    if missing:
        return f"missing tools for the two-host harness: {', '.join(missing)} (install iproute2, " \
               "openssh-server, openssh-client, pdsh)"
    return None


def _which(tool: str) -> str | None:
    return shutil.which(tool) or shutil.which(tool, path="/usr/sbin:/sbin:/usr/bin:/bin")


@dataclass
class Host:
    """One simulated host: its namespace, address and sshd."""

    namespace: str
    address: str
    hostname: str
    sshd: subprocess.Popen | None = None

    def enter(self) -> list[str]:
        """Command prefix that runs a command "on" this host: in its network namespace, with its
        own hostname (a private UTS namespace; MPI tells hosts apart by hostname)."""
        return ["ip", "netns", "exec", self.namespace, "unshare", "--uts", "--",
                "sh", "-c", 'hostname "$0" && exec "$@"', self.hostname]


@dataclass
class TwoHosts:
    """Set up with `start()`, torn down with `stop()` (idempotent); or use as a context manager."""

    workdir: Path
    slots: int = 1
    extra_env: dict[str, str] = field(default_factory=dict)
    hosts: list[Host] = field(init=False)

    def __post_init__(self) -> None:
        if self.slots < 1:
            raise ValueError(f"slots must be >= 1, got {self.slots}")
        self.workdir = Path(self.workdir)
        tag = f"mt{os.getpid()}x{int(time.time() * 1000) % 100000}"  # matches NAMESPACE_PATTERN
        self.hosts = [Host(f"{tag}a", f"{SUBNET_PREFIX}1", "megatiny-host-a"),
                      Host(f"{tag}b", f"{SUBNET_PREFIX}2", "megatiny-host-b")]

    # ---- paths -------------------------------------------------------------------------------
    @property
    def hostfile(self) -> Path:
        return self.workdir / "hostfile"

    @property
    def ssh_config(self) -> Path:
        return self.workdir / "ssh_config"

    @property
    def deepspeed_env_file(self) -> Path:
        return self.workdir / "deepspeed_env"

    @property
    def master_addr(self) -> str:
        return self.hosts[0].address

    # ---- lifecycle ---------------------------------------------------------------------------
    def __enter__(self) -> TwoHosts:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> None:
        reason = unavailable_reason()
        if reason:
            raise HarnessUnavailable(reason)
        self.workdir.mkdir(parents=True, exist_ok=True)
        remove_stale_namespaces()
        try:
            self._create_network()
        except RuntimeError as err:
            self.stop()
            raise HarnessUnavailable(f"cannot create network namespaces: {err}") from err
        try:
            self._write_ssh_files()
            for index, host in enumerate(self.hosts):
                self._start_sshd(index, host)
            self._write_launcher_files()
            self._wait_for_ssh()
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Kill everything left in both namespaces, then delete them (the veth pair goes with them)."""
        for host in self.hosts:
            self.kill_host(host, timeout=10)
            if host.sshd is not None:
                host.sshd.wait(timeout=10)
                host.sshd = None
            subprocess.run(["ip", "netns", "del", host.namespace], stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL, timeout=IP_TIMEOUT_S)
            shutil.rmtree(Path(ETC_NETNS) / host.namespace, ignore_errors=True)

    def _create_network(self) -> None:
        a, b = self.hosts
        _sh(["ip", "netns", "add", a.namespace])
        _sh(["ip", "netns", "add", b.namespace])
        # `ip netns exec NS` bind-mounts /etc/netns/NS/hosts over /etc/hosts: both hostnames
        # resolve on both hosts, as on a cluster, without touching the real /etc/hosts.
        hosts_file = "127.0.0.1 localhost\n" + "".join(f"{h.address} {h.hostname}\n" for h in self.hosts)
        for host in self.hosts:
            etc = Path(ETC_NETNS) / host.namespace
            etc.mkdir(parents=True, exist_ok=True)
            (etc / "hosts").write_text(hosts_file)
        # Created directly inside the namespaces: the root namespace never sees the pair.
        _sh(["ip", "-n", a.namespace, "link", "add", IFNAME, "type", "veth", "peer", "name", IFNAME,
             "netns", b.namespace])
        for host in self.hosts:
            _sh(["ip", "-n", host.namespace, "addr", "add", f"{host.address}/24", "dev", IFNAME])
            _sh(["ip", "-n", host.namespace, "link", "set", "lo", "up"])
            _sh(["ip", "-n", host.namespace, "link", "set", IFNAME, "up"])

    def _write_ssh_files(self) -> None:
        key = self.workdir / "id_ed25519"
        _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "megatiny-multinode-test", "-f", str(key)])
        (self.workdir / "authorized_keys").write_text(key.with_suffix(".pub").read_text())
        known_hosts = []
        for index, host in enumerate(self.hosts):
            host_key = self.workdir / f"host{index}_key"
            _sh(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)])
            # by address (the hostfile) and by hostname (what a rank's heartbeat names its host)
            public_key = host_key.with_suffix(".pub").read_text().strip()
            known_hosts.append(f"{host.address},{host.hostname} {public_key}")
        (self.workdir / "known_hosts").write_text("\n".join(known_hosts) + "\n")
        self.ssh_config.write_text(
            f"Host {SUBNET_PREFIX}* {' '.join(h.hostname for h in self.hosts)}\n"
            "  User root\n"
            f"  IdentityFile {key}\n"
            "  IdentitiesOnly yes\n"
            f"  UserKnownHostsFile {self.workdir / 'known_hosts'}\n"
            "  GlobalKnownHostsFile /dev/null\n"
            "  StrictHostKeyChecking yes\n"
            "  BatchMode yes\n"
            "  ConnectTimeout 5\n"
            # A dead peer host is noticed by the ssh client within ~6 s even without a TCP reset.
            "  ServerAliveInterval 2\n"
            "  ServerAliveCountMax 3\n"
            "  LogLevel ERROR\n")
        # DeepSpeed's runner checks reachability with a plain `ssh HOST hostname` (no way to pass
        # options), so a tiny wrapper earlier on PATH points every ssh at the private config.
        bin_dir = self.workdir / "bin"
        bin_dir.mkdir(exist_ok=True)
        wrapper = bin_dir / "ssh"
        wrapper.write_text(f'#!/bin/sh\nexec {_which("ssh")} -F {self.ssh_config} "$@"\n')
        wrapper.chmod(0o755)

    def _start_sshd(self, index: int, host: Host) -> None:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        config = self.workdir / f"sshd{index}_config"
        config.write_text(
            f"ListenAddress {host.address}\n"
            "Port 22\n"
            f"HostKey {self.workdir / f'host{index}_key'}\n"
            f"PidFile {self.workdir / f'sshd{index}.pid'}\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\n"
            "PermitRootLogin prohibit-password\n"
            "PubkeyAuthentication yes\n"
            "PasswordAuthentication no\n"
            "KbdInteractiveAuthentication no\n"
            "UsePAM no\n"
            "StrictModes no\n"
            "PrintMotd no\n"
            "ClientAliveInterval 2\n"
            "ClientAliveCountMax 3\n"
            "LogLevel ERROR\n")
        log = open(self.workdir / f"sshd{index}.log", "w")
        # -D: stay in the foreground so we own the process; -e: log to stderr (our log file).
        host.sshd = subprocess.Popen(
            [*host.enter(), _which("sshd"), "-D", "-e", "-f", str(config)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()

    def _write_launcher_files(self) -> None:
        self.hostfile.write_text("".join(f"{h.address} slots={self.slots}\n" for h in self.hosts))
        env = {
            # Ranks started over ssh get the login PATH; the venv's tools must come first (DeepSpeed
            # JIT-builds ops with `ninja`, and a different ninja rebuilds them on every launch).
            "PATH": path_with_interpreter_bin(os.environ.get("PATH", "/usr/bin:/bin")),
            # Without this, gloo advertises the hostname's address (127.0.0.1 here) to its peers.
            "GLOO_SOCKET_IFNAME": IFNAME,
            "NCCL_SOCKET_IFNAME": IFNAME,
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
            "TOKENIZERS_PARALLELISM": "false",
            "HF_HUB_OFFLINE": "1",
            **rank_env(),
            **self.extra_env,
        }
        self.deepspeed_env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))

    def _wait_for_ssh(self, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        for host in self.hosts:
            while True:
                ssh = [_which("ssh"), "-F", str(self.ssh_config), host.address, "true"]
                try:
                    probe = subprocess.run(self.wrap(ssh), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True, timeout=timeout)
                except subprocess.TimeoutExpired:
                    probe = subprocess.CompletedProcess([], 255, f"ssh probe hung for {timeout:.0f} s")
                if probe.returncode == 0:
                    break
                if host.sshd is not None and host.sshd.poll() is not None or time.monotonic() > deadline:
                    log = (self.workdir / f"sshd{self.hosts.index(host)}.log").read_text()
                    raise RuntimeError(f"sshd on {host.address} not reachable: {probe.stdout.strip()}\n"
                                       f"sshd log:\n{log}")
                time.sleep(0.2)

    # ---- running things ----------------------------------------------------------------------
    def launch_env(self) -> dict[str, str]:
        """Environment for a `deepspeed --hostfile` launcher started on host A."""
        env = dict(os.environ)
        path = path_with_interpreter_bin(env.get("PATH", "/usr/bin:/bin"))
        env["PATH"] = f"{self.workdir / 'bin'}{os.pathsep}{path}"
        env["PDSH_RCMD_TYPE"] = "ssh"
        env["PDSH_SSH_ARGS"] = f"-F {self.ssh_config} -l%u %h"
        # DeepSpeed joins this onto ~ and '.', and an absolute path wins the join: a private env
        # file instead of ~/.deepspeed_env or one in the repository.
        env["DS_ENV_FILE"] = str(self.deepspeed_env_file)
        env["PYTHONUNBUFFERED"] = "1"
        env["MT_HOSTFILE"] = str(self.hostfile)
        env["MT_MASTER_ADDR"] = self.master_addr
        return env

    def wrap(self, cmd: list[str], host: int = 0) -> list[str]:
        return [*self.hosts[host].enter(), *cmd]

    def popen_on(self, cmd: list[str], host: int = 0, cwd: Path | str = REPO_ROOT,
                 env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
        """Start `cmd` inside host `host`'s namespace with stdout+stderr piped as text."""
        full_env = self.launch_env()
        full_env.update(env or {})
        return subprocess.Popen(self.wrap(cmd, host), cwd=cwd, env=full_env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True, **kwargs)

    def run_on(self, cmd: list[str], timeout: float, host: int = 0, cwd: Path | str = REPO_ROOT,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        """Run `cmd` inside host `host`; on timeout everything is killed and the output kept."""
        proc = self.popen_on(cmd, host, cwd, env)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_all()
            out, _ = proc.communicate(timeout=30)
            out += f"\n[harness] timed out after {timeout:.0f} s; killed every process on both hosts\n"
            return subprocess.CompletedProcess(proc.args, 124, out)
        return subprocess.CompletedProcess(proc.args, proc.returncode, out)

    def pids(self, host: Host | int) -> list[int]:
        host = self.hosts[host] if isinstance(host, int) else host
        return _namespace_pids(host.namespace)

    @staticmethod
    def signal_pid(pid: int, signum: int) -> None:
        """Send `signum` to `pid`, ignoring a process that is already gone."""
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def restart_host(self, host: Host | int) -> None:
        """Bring a killed host back: start its sshd again (its namespace and address never went away)."""
        index = host if isinstance(host, int) else self.hosts.index(host)
        self.kill_host(index)
        _sh(["ip", "-n", self.hosts[index].namespace, "link", "set", IFNAME, "up"])
        self._start_sshd(index, self.hosts[index])
        self._wait_for_ssh()

    def unplug_host(self, host: Host | int) -> None:
        """Freeze the host and take its link down: it vanishes without resetting any connection,
        like a machine that lost power or network (peers notice only through timeouts)."""
        host = self.hosts[host] if isinstance(host, int) else host
        self.freeze_host(host)
        _sh(["ip", "-n", host.namespace, "link", "set", IFNAME, "down"])

    def freeze_host(self, host: Host | int) -> None:
        """SIGSTOP every process on the host: it stops making progress but keeps its sockets."""
        for pid in self.pids(host):
            self.signal_pid(pid, signal.SIGSTOP)

    def kill_host(self, host: Host | int, timeout: float = 10) -> None:
        """SIGKILL every process in the host's namespace (its sshd included), like pulling the plug."""
        host = self.hosts[host] if isinstance(host, int) else host
        deadline = time.monotonic() + timeout
        while (pids := self.pids(host)) and time.monotonic() < deadline:
            for pid in pids:
                self.signal_pid(pid, signal.SIGKILL)
            time.sleep(0.1)
        if host.sshd is not None:
            host.sshd.wait(timeout=timeout)

    def kill_all(self) -> None:
        for host in self.hosts:
            self.kill_host(host)


def _namespace_pids(namespace: str) -> list[int]:
    result = subprocess.run(["ip", "netns", "pids", namespace], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, timeout=IP_TIMEOUT_S)
    return [int(p) for p in result.stdout.split()]


def remove_stale_namespaces() -> list[str]:
    """Delete harness namespaces whose owning process is gone (a run killed before its teardown),
    with every process left in them. Returns the names removed."""
    listing = subprocess.run(["ip", "netns", "list"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                             text=True, timeout=IP_TIMEOUT_S).stdout
    removed = []
    for name in (line.split()[0] for line in listing.splitlines() if line.strip()):
        match = NAMESPACE_PATTERN.match(name)
        if not match or Path(f"/proc/{match.group(1)}").exists():
            continue
        for _ in range(50):
            pids = _namespace_pids(name)
            if not pids:
                break
            for pid in pids:
                TwoHosts.signal_pid(pid, signal.SIGKILL)
            time.sleep(0.1)
        subprocess.run(["ip", "netns", "del", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                       timeout=IP_TIMEOUT_S)
        shutil.rmtree(Path(ETC_NETNS) / name, ignore_errors=True)
        removed.append(name)
    return removed


def _smoke_command(out_dir: Path, master_port: int | None = None) -> list[str]:
    master_port = free_port() if master_port is None else master_port
    return ["deepspeed", "--hostfile", "{hostfile}", "--master_addr", "{master_addr}",
            "--master_port", str(master_port), "tests/foundation/zero3_tiny_module.py",
            "--out-dir", str(out_dir), "--steps", "10"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Start two namespace 'hosts' with sshd, run a command on host A, tear down. "
                    "In the command, {hostfile} and {master_addr} are replaced (also exported as "
                    "$MT_HOSTFILE and $MT_MASTER_ADDR).")
    parser.add_argument("--workdir", type=Path, default=None, help="default: a fresh temp dir")
    parser.add_argument("--slots", type=int, default=1, help="ranks per host in the hostfile")
    parser.add_argument("--timeout", type=float, default=600, help="seconds before everything is killed")
    parser.add_argument("command", nargs=argparse.REMAINDER,
                        help="after `--`; default: the tiny ZeRO-3 smoke test across the two hosts")
    args = parser.parse_args(argv)
    command = [c for c in args.command if c != "--"] if args.command else []
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="megatiny-2hosts-"))
    if not command:
        command = _smoke_command(workdir / "smoke")
        (workdir / "smoke").mkdir(parents=True, exist_ok=True)
    try:
        with TwoHosts(workdir, slots=args.slots) as hosts:
            command = [c.replace("{hostfile}", str(hosts.hostfile))
                       .replace("{master_addr}", hosts.master_addr) for c in command]
            print(f"[harness] hosts {[h.address for h in hosts.hosts]}, hostfile {hosts.hostfile}; "
                  f"running on {hosts.hosts[0].address}: {shlex.join(command)}", flush=True)
            result = hosts.run_on(command, timeout=args.timeout)
            print(result.stdout, end="")
            print(f"[harness] exit code {result.returncode}", flush=True)
            return result.returncode
    except HarnessUnavailable as err:
        print(f"[harness] unavailable: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
