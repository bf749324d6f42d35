"""The parts of benchmarks/gpu/run_all.sh: their plan, time caps and commands (run that script).

    python benchmarks/gpu/run_all.py --dry-run            the GPU plan and its estimated time
    python benchmarks/gpu/run_all.py --out DIR            run it on the GPU (after run_all.sh's install)
    python benchmarks/gpu/run_all.py --smoke --out DIR    every part on CPU, tiny preset, 2 steps

Each part is one or more processes under a time cap (killed when it runs out; what it wrote so far
stays); every part writes JSON into DIR, and DIR/summary.json lists each part's status and time.
The estimate of the dry run is the sum of the caps, so the GPU run cannot take longer.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from megatiny.process_env import exit_fast

REPO_ROOT = Path(__file__).resolve().parents[2]
GPU_LIMIT_S = 12 * 60
INSTALL_CAP_S = 30  # run_all.sh's install from the carried wheels (pip --no-index), before the parts
PRESET, SEQ, MICRO = "tinyllama-1.1b", 2048, 8
TRAIN, PROFILE = "benchmarks/bench_train_gpu.py", "benchmarks/gpu/profile_step.py"
TIMEOUT_SCALE_ENV = "MEGATINY_TEST_TIMEOUT_SCALE"  # tests/helpers.py's: the smoke is the suite's
# The smoke's sequence length: with micro-batch 2 its compiled blocks' training graph is the one of
# tests/parallel/test_compile.py's Inductor cases, so the suite (one Inductor cache) compiles it once.
SMOKE_SEQ = 16


@dataclass
class Part:
    """A named step of the plan: commands run one after the other within `cap_s` seconds."""
    name: str
    what: str
    cap_s: int
    commands: list[list[str]] = field(default_factory=list)
    env: list[dict[str, str]] = field(default_factory=list)  # per command (CPU side: no CUDA)


def _python(script: str, *args: str) -> list[str]:
    return [sys.executable, str(REPO_ROOT / script), *map(str, args)]


def gpu_plan(out: Path) -> list[Part]:
    """What the GPU run measures (tinyllama-1.1b, bf16, seq 2048, one GPU)."""
    backends = (["flash_attn"] if importlib.util.find_spec("flash_attn") else []) + ["sdpa"]
    model_step = _python("benchmarks/bench_gpu_model.py", "--preset", PRESET, "--seq", SEQ, "--batch", MICRO,
                         "--dtype", "bf16", "--backends", *backends, "--activation-checkpointing", 0, 1,
                         "--compile", "--max-batch", 64, "--steps", 4, "--warmup", 2, "--peak-tflops", 989,
                         "--json", out / "model_step.json")
    train = [_python(TRAIN, "--preset", PRESET, "--seq", SEQ, "--micro-batch", MICRO,
                     "--steps", 4, "--warmup", 2, "--ds-config", f"ds_configs/zero{stage}.json",
                     "--precision", "bf16", "--peak-tflops", 989, *(["--compile"] if compile else []),
                     "--json", out / f"train_zero{stage}_{'compiled' if compile else 'eager'}.json")
             for stage in (1, 3) for compile in (False, True)]
    return [
        Part("model_step", f"{PRESET} bf16 seq {SEQ}, model + AdamW step per attention backend "
             f"({', '.join(backends)}; math skipped), eager and compiled, activation checkpointing 0 and 1, "
             f"micro-batch {MICRO} then doubled up to 64 until out of memory: tokens/s, TFLOP/s, MFU at "
             "989 TFLOP/s, peak memory", 330, [model_step]),
        Part("deepspeed_train", f"one-GPU DeepSpeed training of {PRESET} (micro-batch {MICRO}, bf16) ZeRO-1 "
             "and ZeRO-3, eager and compiled: tokens/s, TFLOP/s, MFU, peak memory", 230, train),
        *_loss_and_profile(out, device_preset="micro-20m", seq=256, micro=4, steps=6, warmup=2,
                           profile=("--preset", PRESET, "--seq", SEQ, "--batch", MICRO, "--dtype", "bf16"),
                           caps=(70, 45)),
    ]


def smoke_cap_s(seconds: int) -> int:
    """A smoke part's cap: `seconds` times $MEGATINY_TEST_TIMEOUT_SCALE (as the suite scales every
    subprocess budget, e.g. 3 on a slow laptop)."""
    return round(seconds * float(os.environ.get(TIMEOUT_SCALE_ENV, "1")))


def smoke_plan(out: Path) -> list[Part]:
    """Every part on CPU with the tiny preset and 2 steps (the suite runs this); caps scaled by
    `smoke_cap_s`."""
    model_step = _python("benchmarks/bench_gpu_model.py", "--device", "cpu", "--preset", "tiny-test",
                         "--seq", SMOKE_SEQ, "--batch", 2, "--dtype", "fp32", "--backends", "sdpa",
                         "--activation-checkpointing", 0, 1, "--compile", "--max-batch", 2,
                         "--steps", 1, "--warmup", 1, "--peak-tflops", 1, "--json", out / "model_step.json")
    train = [_python(TRAIN, "--preset", "tiny-test", "--seq", SMOKE_SEQ, "--micro-batch", 2,
                     "--steps", 1, "--warmup", 1, "--ds-config", f"ds_configs/zero{stage}.json",
                     "--precision", "fp32", "--peak-tflops", 1, *(["--compile"] if compile else []),
                     "--json", out / f"train_zero{stage}_{'compiled' if compile else 'eager'}.json")
             for stage, compile in ((3, True),)]  # ZeRO-1 eager: the loss_difference part
    return [
        Part("model_step", "tiny-test fp32 on CPU: sdpa (both backends: tests/model/test_benchmarks.py), "
             "eager and compiled, checkpointing 0/1, micro-batch 2 (the largest-batch search stops at 2: "
             "each compiled shape costs a cold compile on CI)", smoke_cap_s(240), [model_step]),
        Part("deepspeed_train", "tiny-test on CPU: ZeRO-3 compiled (ZeRO-1 eager runs in loss_difference)",
             smoke_cap_s(240), train),
        *_loss_and_profile(out, device_preset="tiny-test", seq=SMOKE_SEQ, micro=2, steps=1, warmup=1,
                           profile=("--device", "cpu", "--preset", "tiny-test", "--seq", SMOKE_SEQ,
                                    "--batch", 2, "--dtype", "fp32", "--steps", 1, "--warmup", 1),
                           caps=(smoke_cap_s(240), smoke_cap_s(120)),
                           device_env={"CUDA_VISIBLE_DEVICES": ""}),
    ]


def _loss_and_profile(out: Path, device_preset: str, seq: int, micro: int, steps: int, warmup: int,
                      profile: tuple, caps: tuple[int, int], device_env: dict | None = None) -> list[Part]:
    """The CPU fp32 vs device bf16 losses (warmup + steps steps of the same engine and batch) and
    the profiler table."""
    def train(precision: str, name: str) -> list[str]:
        return _python("benchmarks/bench_train_gpu.py", "--preset", device_preset, "--seq", seq,
                       "--micro-batch", micro, "--steps", steps, "--warmup", warmup,
                       "--ds-config", "ds_configs/zero1.json", "--precision", precision,
                       "--json", out / f"losses_{name}.json")
    cpu = {"CUDA_VISIBLE_DEVICES": ""}
    return [
        Part("loss_difference", f"{warmup + steps} steps of {device_preset} (seq {seq}, micro-batch {micro}, "
             "ZeRO-1): CPU fp32 against the device in bf16, the loss difference of every step",
             caps[0], [train("fp32", "cpu_fp32"), train("bf16", "device_bf16")], [cpu, device_env or {}]),
        Part("profile", "torch.profiler of 2 training steps: the 10 largest kernels by own device time",
             caps[1], [_python(PROFILE, *profile, "--json", out / "profile_top10.json")]),
    ]


def estimate_s(parts: list[Part]) -> int:
    """The plan's upper bound: every part's cap and the install's."""
    return INSTALL_CAP_S + sum(part.cap_s for part in parts)


def run_part(part: Part) -> dict:
    """Run a part's commands in order until its cap; its status and time."""
    started = time.monotonic()
    status = "ok"
    for i, command in enumerate(part.commands):
        left = part.cap_s - (time.monotonic() - started)
        env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), **(part.env[i] if i < len(part.env) else {})}
        try:
            result = subprocess.run(command, cwd=REPO_ROOT, env=env, timeout=max(left, 1))
        except subprocess.TimeoutExpired:
            status = f"time cap ({part.cap_s} s) reached in command {i + 1} of {len(part.commands)}"
            break
        if result.returncode != 0:
            status = f"command {i + 1} failed with exit status {result.returncode}"
            break
    return {"part": part.name, "status": status, "seconds": round(time.monotonic() - started, 1)}


def loss_differences(out: Path) -> dict | None:
    """Per-step |device bf16 - CPU fp32| loss and its relative size, from the loss_difference part."""
    paths = [out / "losses_cpu_fp32.json", out / "losses_device_bf16.json"]
    if not all(p.exists() for p in paths):
        return None
    cpu, device = (json.loads(p.read_text())["losses"] for p in paths)
    diffs = [abs(a - b) for a, b in zip(device, cpu)]
    return {"cpu_fp32": cpu, "device_bf16": device, "abs_diff": diffs,
            "max_rel_diff": max(d / abs(c) for d, c in zip(diffs, cpu))}


def print_plan(parts: list[Part]) -> None:
    for part in parts:
        print(f"- {part.name} (cap {part.cap_s} s): {part.what}")
        for command in part.commands:
            print("    " + " ".join(str(c).replace(str(REPO_ROOT) + "/", "") for c in command))
    total = estimate_s(parts)
    print(f"- install (cap {INSTALL_CAP_S} s): run_all.sh installs what is missing from the carried wheels")
    print(f"estimated GPU time: at most {total} s = {total / 60:.1f} min (sum of the caps; "
          f"limit {GPU_LIMIT_S // 60} min)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--out", default="benchmarks/gpu/results")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true")
    mode.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    out = Path(args.out).resolve()
    parts = smoke_plan(out) if args.smoke else gpu_plan(out)
    if args.dry_run:
        print_plan(parts)
        return 0 if estimate_s(parts) < GPU_LIMIT_S else 1
    out.mkdir(parents=True, exist_ok=True)
    summary = [run_part(part) for part in parts]
    (out / "loss_difference.json").write_text(json.dumps(loss_differences(out), indent=1))
    (out / "summary.json").write_text(json.dumps({"smoke": args.smoke, "parts": summary}, indent=1))
    for row in summary:
        print(f"[run_all] {row['part']}: {row['status']} ({row['seconds']} s)")
    return 0 if all(row["status"] == "ok" for row in summary) else 1


if __name__ == "__main__":
    exit_fast(main())
