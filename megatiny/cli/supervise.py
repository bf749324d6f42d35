"""Run a training launch command under a supervisor that restarts it after crashes and hangs.

    megatiny supervise --max-restarts 3 --hang-timeout 600 -- \\
        deepspeed --num_gpus 8 tools/train.py --config run.yaml
    megatiny supervise -- python tools/train.py --config run.yaml
    megatiny supervise --allow-shrink -- \\
        deepspeed --hostfile hosts.txt tools/train.py --config run.yaml

The run must use `checkpoint.resume: auto` and a `checkpoint.save_dir` (the relaunch continues
from the newest complete checkpoint that verifies). Events (launch, fault with rank, host and
step, kill, restart with the step it resumes from, give-up) are printed and appended to
SAVE_DIR/supervisor_events.jsonl. Before relaunching a command that lists its hosts (`deepspeed
--hostfile`, `mpirun --hostfile` or `mpirun -H`), every host must answer `ssh HOST true`
(BatchMode, --host-timeout); if one does not, the supervisor gives up naming it, or, with
--allow-shrink, relaunches on the hosts that answer (a new hostfile
SAVE_DIR/supervisor_hostfile_launchN or -H list, mpirun's -np to match; same global batch, more
gradient accumulation per
rank, the checkpoint resharded to the smaller world; a world the run's tensor x pipeline x context
size or batch no longer divides is a reason to give up). A dropped host that answers again is
taken back (asked every --regrow-interval seconds; the job saves, stops and is relaunched with it).
Exit status: 0 when the run finished, the job's status when stopped by SIGTERM/SIGINT, non-zero
with the reason when it gave up.
docs/RESILIENCE.md.
"""
from __future__ import annotations

import argparse
import sys

from megatiny.supervisor.supervise import Options, Supervisor


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__,
                                     usage="%(prog)s [OPTIONS] -- COMMAND [ARGS ...]")
    parser.add_argument("--max-restarts", type=int, default=3,
                        help="give up after this many restarts in a row without a new checkpoint (3)")
    parser.add_argument("--hang-timeout", type=float, default=600.0, metavar="S",
                        help="no rank's heartbeat moved this long during training: a hang (600 s)")
    parser.add_argument("--startup-timeout", type=float, default=1800.0, metavar="S",
                        help="the same before the first step: imports, rendezvous, resume (1800 s)")
    parser.add_argument("--save-timeout", type=float, default=1800.0, metavar="S",
                        help="the same while a rank is saving a checkpoint (1800 s)")
    parser.add_argument("--stop-timeout", type=float, default=600.0, metavar="S",
                        help="after SIGTERM/SIGINT, how long the job may take to save and exit (600 s)")
    parser.add_argument("--dump-wait", type=float, default=5.0, metavar="S",
                        help="after asking the ranks for their stacks (SIGUSR1), wait this long (5 s)")
    parser.add_argument("--save-dir", default=None,
                        help="the run's checkpoint.save_dir (default: learned from rank 0's heartbeat)")
    parser.add_argument("--heartbeat-dir", default=None,
                        help="where ranks write heartbeats (shared by every host; default "
                             "SAVE_DIR/.heartbeats or a temporary directory)")
    parser.add_argument("--allow-shrink", action="store_true",
                        help="with `deepspeed --hostfile` or `mpirun --hostfile`/`-H`: relaunch on the "
                             "hosts that still answer over ssh, same global batch (default: give up naming "
                             "the host that does not answer)")
    parser.add_argument("--host-timeout", type=float, default=10.0, metavar="S",
                        help="before a relaunch, how long each host of the hostfile has to answer ssh (10 s)")
    parser.add_argument("--regrow-interval", type=float, default=300.0, metavar="S",
                        help="with --allow-shrink, after a shrink: ask the dropped hosts this often whether "
                             "they answer again, and if so save, stop and relaunch with them (300 s)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the launch command, after --")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    try:
        options = Options(max_restarts=args.max_restarts, hang_timeout_s=args.hang_timeout,
                          startup_timeout_s=args.startup_timeout, save_timeout_s=args.save_timeout,
                          stop_timeout_s=args.stop_timeout,
                          dump_wait_s=args.dump_wait, save_dir=args.save_dir,
                          heartbeat_dir=args.heartbeat_dir, allow_shrink=args.allow_shrink,
                          host_timeout_s=args.host_timeout, regrow_interval_s=args.regrow_interval)
        supervisor = Supervisor(command, options)
    except ValueError as e:
        parser.error(str(e))
    return supervisor.run()


if __name__ == "__main__":
    sys.exit(main())
