"""A light launcher for the suite's multi-rank runs on one host: what `deepspeed --num_gpus N`
does for them (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR/PORT and `--local_rank=R` for every rank;
the first rank that fails ends the others), without importing torch and DeepSpeed twice before
the ranks start (DeepSpeed's runner and its launch module each do, ~3 s of every launch).

    python -m tests.rank_launcher --nproc 2 --master-port 29500 SCRIPT ARGS...

SCRIPT may be `-m MODULE`. The launcher's exit status is the first non-zero one of a rank (0 when
all succeed); SIGINT/SIGTERM are passed to every rank. The launches that test DeepSpeed's own
launcher (`deepspeed --num_gpus`, `--hostfile`, `mpirun`) keep using it.
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

GRACE_S = 10.0      # after one rank fails, the others get this long to exit before SIGKILL


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nproc", type=int, required=True)
    parser.add_argument("--master-port", type=int, required=True)
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    script = args.command[:2] if args.command[:1] == ["-m"] else args.command[:1]
    rest = args.command[len(script):]
    ranks = []
    for rank in range(args.nproc):
        env = dict(os.environ, RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(args.nproc),
                   LOCAL_WORLD_SIZE=str(args.nproc), LOCAL_SIZE=str(args.nproc), CROSS_RANK="0",
                   CROSS_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.master_port))
        command = [sys.executable, "-u", *script, f"--local_rank={rank}", *rest]
        ranks.append(subprocess.Popen(command, env=env))

    def forward(signum, frame):
        for process in ranks:
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    status = 0
    while any(p.poll() is None for p in ranks):
        failed = [p.returncode for p in ranks if p.returncode not in (None, 0)]
        if failed:
            status = failed[0]
            break
        time.sleep(0.05)
    deadline = time.monotonic() + GRACE_S
    for process in ranks:
        if process.poll() is None:
            process.terminate()
    for process in ranks:
        try:
            process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
    return status or next((p.returncode for p in ranks if p.returncode), 0)


if __name__ == "__main__":
    sys.exit(main())
