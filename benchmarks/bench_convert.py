"""Time and peak memory of converting a tinyllama-1.1b ZeRO-3 checkpoint to Hugging Face bf16.

    python benchmarks/bench_convert.py [--preset tinyllama-1.1b] [--ranks 2] [--workdir DIR]

Builds a checkpoint with random weights in DeepSpeed's ZeRO-3 shard layout (the files, names and
flat fp32 partitions `engine.save_checkpoint` writes for `--ranks` data-parallel ranks, without
the Adam moments, which conversion never reads), then runs `tools/convert_checkpoint.py to-hf` in
a child process and reports its wall time and peak RSS against the targets: < 60 s and < 1.5x the
bf16 model size. (A real DeepSpeed save of a 1.1B model on CPU needs ~15 GB and several minutes;
the layout written here is the one the tests check against real 1- and 2-rank DeepSpeed saves and
DeepSpeed's own zero_to_fp32.)
"""
from __future__ import annotations

import argparse
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from megatiny.process_env import exit_fast

TIME_TARGET_S = 60.0
BUILD_TIMEOUT_S = 3600.0    # building the ZeRO-3 checkpoint of the largest preset
CONVERT_TIMEOUT_S = 3600.0
RSS_TARGET_RATIO = 1.5  # of the bf16 model size


def build_zero3_checkpoint(root: Path, preset: str, ranks: int, sub_group_size: int = 1_000_000_000) -> int:
    """Write ROOT/step_00000001 in ZeRO-3 layout for `ranks` ranks; returns the parameter count."""
    import torch
    from deepspeed.runtime.zero.config import ZeroStageEnum

    from megatiny.checkpoint.hf import weight_table
    from megatiny.checkpoint.io import write_latest
    from megatiny.checkpoint.metadata import TrainState, write_metadata
    from megatiny.model.config import get_preset

    config = get_preset(preset)
    tag_dir = root / "step_00000001"
    tag_dir.mkdir(parents=True)
    shapes = {e.megatiny: torch.Size(e.shape) for e in weight_table(config)}
    generator = torch.Generator().manual_seed(0)
    for rank in range(ranks):
        groups, current, current_numel = [], [], 0
        for shape in shapes.values():
            per_rank = math.ceil(shape.numel() / ranks)
            # each rank's slice of every parameter; random values, padded like DeepSpeed
            piece = torch.empty(per_rank).normal_(0, 0.02, generator=generator)
            if current and current_numel + per_rank > sub_group_size:
                groups.append(torch.cat(current))
                current, current_numel = [], 0
            current.append(piece)
            current_numel += per_rank
        groups.append(torch.cat(current))
        del current
        optim = {"optimizer_state_dict": {"zero_stage": ZeroStageEnum.weights, "partition_count": ranks,
                                          "fp32_flat_groups": groups, "optimizer_state_dict": {}},
                 "ds_version": "bench"}
        torch.save(optim, tag_dir / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt")
        del optim, groups
        module = {name: torch.empty(0, dtype=torch.bfloat16) for name in shapes}
        states = {"module": module, "buffer_names": [], "param_shapes": [shapes], "frozen_param_shapes": {},
                  "shared_params": {}, "ds_version": "bench", "dp_world_size": ranks}
        torch.save(states, tag_dir / f"zero_pp_rank_{rank}_mp_rank_00_model_states.pt")
    write_metadata(tag_dir, config, state=TrainState(step=1), notes={"benchmark": "synthetic ZeRO-3 layout"})
    write_latest(root, tag_dir.name)
    return config.num_parameters()


def run_measured(cmd: list[str]) -> tuple[float, int, int]:
    """Run `cmd`; (wall seconds, exit status, peak RSS bytes of that child alone).

    The child's peak RSS includes what it inherited at fork, so this process stays small: it
    imports neither torch nor megatiny, and builds the checkpoint in a child of its own."""
    start = time.perf_counter()
    child = subprocess.Popen(cmd)
    deadline = start + CONVERT_TIMEOUT_S
    while True:
        pid, status, usage = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() > deadline:
            child.kill()
            raise RuntimeError(f"{' '.join(cmd)} still running after {CONVERT_TIMEOUT_S:.0f} s; killed")
        time.sleep(0.1)
    elapsed = time.perf_counter() - start
    return elapsed, os.waitstatus_to_exitcode(status), usage.ru_maxrss * 1024


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tinyllama-1.1b")
    parser.add_argument("--ranks", type=int, default=2)
    parser.add_argument("--workdir", help="where to build (default: a temp dir, removed afterwards)")
    parser.add_argument("--build-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="bench_convert_"))
    if args.build_only:
        start = time.perf_counter()
        params = build_zero3_checkpoint(workdir / "ckpt", args.preset, args.ranks)
        print(f"built {args.preset} ({params / 1e9:.3f} B params) ZeRO-3 checkpoint, {args.ranks} ranks, "
              f"in {time.perf_counter() - start:.1f} s")
        (workdir / "params.txt").write_text(str(params))
        return 0
    try:
        subprocess.run([sys.executable, __file__, "--build-only", "--preset", args.preset, "--ranks",
                        str(args.ranks), "--workdir", str(workdir)], check=True, timeout=BUILD_TIMEOUT_S)
        params = int((workdir / "params.txt").read_text())
        tool = Path(__file__).resolve().parents[1] / "tools" / "convert_checkpoint.py"
        elapsed, code, peak = run_measured([sys.executable, str(tool), "to-hf", str(workdir / "ckpt"),
                                            str(workdir / "hf"), "--dtype", "bf16", "--no-tokenizer"])
        if code != 0:
            print(f"conversion failed with exit status {code}")
            return 1
        bf16_bytes = params * 2
        print(f"convert ZeRO-3 -> HF bf16: {elapsed:.1f} s (target {TIME_TARGET_S:.0f} s, "
              f"ratio {elapsed / TIME_TARGET_S:.2f})")
        print(f"peak RSS {peak / 2**30:.2f} GiB = {peak / bf16_bytes:.2f}x the bf16 model "
              f"({bf16_bytes / 2**30:.2f} GiB); target {RSS_TARGET_RATIO}x, "
              f"ratio {peak / bf16_bytes / RSS_TARGET_RATIO:.2f}")
        return 0
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    exit_fast(main())
