"""A private sshd on 127.0.0.1 so `deepspeed --hostfile` (pdsh over ssh) can be tested without
touching ~/.ssh: own host key, own client key, own ssh_config passed through PDSH_SSH_ARGS."""
from __future__ import annotations

import getpass
import os
import shutil
import subprocess
import time
from pathlib import Path

from megatiny.process_env import path_with_interpreter_bin
from tests.helpers import free_port


def missing_tools() -> str | None:
    """Why a private sshd cannot run here, or None."""
    for tool in ("sshd", "ssh", "ssh-keygen", "pdsh"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            return f"{tool} is not installed"
    return None


class LocalSshd:
    """Context manager: starts sshd on a free port, returns env vars that make pdsh use it."""

    def __init__(self, workdir: Path):
        self.workdir = Path(workdir)
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def ssh_config(self) -> Path:
        return self.workdir / "ssh_config"

    def env(self) -> dict[str, str]:
        """Environment for the `deepspeed` launcher process. pdsh reads PDSH_SSH_ARGS; the
        launcher's own reachability probe runs a bare `ssh HOST hostname`, so an `ssh` wrapper that
        adds `-F ssh_config` comes first on PATH."""
        path = path_with_interpreter_bin(os.environ.get("PATH"))
        return {"PDSH_RCMD_TYPE": "ssh", "PDSH_SSH_ARGS": f"-F {self.ssh_config} -l%u %h",
                "PATH": f"{self.workdir / 'bin'}{os.pathsep}{path}"}

    def __enter__(self) -> LocalSshd:
        self.workdir.mkdir(parents=True, exist_ok=True)
        keygen = shutil.which("ssh-keygen")
        for name in ("host_key", "client_key"):
            subprocess.run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(self.workdir / name)],
                           check=True, timeout=60)
        (self.workdir / "authorized_keys").write_text((self.workdir / "client_key.pub").read_text())
        os.chmod(self.workdir / "authorized_keys", 0o600)
        config = self.workdir / "sshd_config"
        config.write_text(
            f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {self.workdir / 'host_key'}\n"
            f"AuthorizedKeysFile {self.workdir / 'authorized_keys'}\nStrictModes no\n"
            "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
            "PermitRootLogin yes\nUsePAM no\n"
            f"PidFile {self.workdir / 'sshd.pid'}\n")
        self.ssh_config.write_text(
            f"Host *\n  Port {self.port}\n  IdentityFile {self.workdir / 'client_key'}\n"
            "  IdentitiesOnly yes\n"
            "  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
            "  BatchMode yes\n")
        wrapper = self.workdir / "bin" / "ssh"
        wrapper.parent.mkdir(exist_ok=True)
        wrapper.write_text(f'#!/bin/sh\nexec {shutil.which("ssh")} -F {self.ssh_config} "$@"\n')
        wrapper.chmod(0o755)
        if os.geteuid() == 0:
            Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation dir
        sshd = shutil.which("sshd") or "/usr/sbin/sshd"
        self.log = open(self.workdir / "sshd.log", "w")
        self.process = subprocess.Popen([sshd, "-D", "-e", "-f", str(config)], stdout=self.log,
                                        stderr=subprocess.STDOUT)
        self._wait_reachable()
        return self

    def _wait_reachable(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                ssh = ["ssh", "-F", str(self.ssh_config), "-l", getpass.getuser(), "127.0.0.1", "true"]
                probe = subprocess.run(ssh, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                       timeout=timeout)
            except subprocess.TimeoutExpired:
                probe = subprocess.CompletedProcess([], 255, f"ssh probe hung for {timeout:.0f} s")
            if probe.returncode == 0:
                return
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.__exit__(None, None, None)
                raise RuntimeError(f"private sshd not reachable: {probe.stdout.strip()}\n"
                                   f"{(self.workdir / 'sshd.log').read_text()}")
            time.sleep(0.2)

    def __exit__(self, *exc) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
        self.log.close()
