"""Launched by tests/model/test_families_training.py: continued pretraining of each imported family
model (`checkpoint.init_from` = a tiny random HF directory) with the trainer's own engines
(`megatiny.training.engine.build_engine`, ZeRO-1, one case ZeRO-3, AdamW, gradient clipping, fp32)
on fixed batches.

With one rank (`--reference`): every family on one rank for STEPS steps. With two ranks: each
family on the layouts of `CASES`, then the resumes of `RESUMES` (a step-2 checkpoint of one
layout, the one-rank run's included, continued on another layout for steps 3 and 4; the runs they
continue save at step 2 too). Every run's step-4 checkpoint is exported to Hugging Face (fp32) by
`megatiny.checkpoint.export_hf` into OUT_DIR/<family>/<run>/hf. Every rank writes
OUT_DIR/runs-rank<R>.json: run name -> the global losses and DeepSpeed's gradient norms.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import deepspeed
import torch
import torch.distributed as dist

from megatiny.checkpoint import export_hf
from megatiny.checkpoint.layout import tag_for_step
from megatiny.checkpoint.manager import CheckpointManager
from megatiny.checkpoint.metadata import TrainState, WorldLayout
from megatiny.parallel.process_group import skip_inference_shm_allreduce
from megatiny.process_env import exit_fast
from megatiny.training.config import RunConfig
from megatiny.training.engine import build_engine
from tests.helpers import finish_rank

GLOBAL_BATCH, SEQ, STEPS, LR, CLIP = 4, 32, 4, 2e-3, 0.5
SAVE_AT = (2, 4)
PIPELINE_MICRO_BATCHES = 2
LAYOUTS = {"one": {}, "tp2": {"tensor": 2}, "tp2-sp": {"tensor": 2, "sequence_parallel": True},
           "cp2": {"context": 2}, "pp2": {"pipeline": 2}, "tp2-zero3": {"tensor": 2}}


def zero_stage(layout: str) -> int:
    """ZeRO-1, or 3 for the layouts named so (sharded biases partitioned by ZeRO-3 too)."""
    return 3 if layout.endswith("zero3") else 1
# family -> its two-rank layouts (llama-bias: Llama's attention_bias on q/k/v/o, untied)
CASES = {"llama3.2": ("tp2", "tp2-sp", "cp2", "pp2"), "smollm2": ("tp2", "tp2-sp", "cp2", "pp2"),
         "qwen2.5": ("tp2", "tp2-sp", "cp2", "pp2", "tp2-zero3"), "mistral": ("tp2", "tp2-sp", "cp2", "pp2"),
         "llama-bias": ("tp2-sp", "pp2")}
# (family, layout that wrote the step-2 checkpoint, layout that continues it)
RESUMES = (("llama3.2", "tp2", "cp2"), ("smollm2", "cp2", "tp2-sp"), ("qwen2.5", "tp2-sp", "cp2"),
           ("qwen2.5", "one", "tp2"), ("qwen2.5", "pp2", "tp2"), ("llama3.2", "one", "pp2"))


def run_name(layout: str, resumed_from: str | None = None) -> str:
    return layout if resumed_from is None else f"{resumed_from}-to-{layout}"


def batch(step: int, vocab_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of `step` (two batches, alternating, to be memorized): inputs and shifted
    labels, Long[GLOBAL_BATCH, SEQ]."""
    generator = torch.Generator().manual_seed(step % 2)
    tokens = torch.randint(0, vocab_size, (GLOBAL_BATCH, SEQ + 1), generator=generator)
    return tokens[:, :-1], tokens[:, 1:]


def run_config(hf_dir: Path, layout: str, save_dir: Path) -> RunConfig:
    """No model section: the architecture is the HF directory's (`checkpoint.init_from`)."""
    pipelined = LAYOUTS[layout].get("pipeline", 1) > 1  # (one data-parallel replica on every layout)
    micro = GLOBAL_BATCH // (PIPELINE_MICRO_BATCHES if pipelined else 1)
    return RunConfig.from_dict({
        "checkpoint": {"init_from": str(hf_dir), "save_dir": str(save_dir)},
        "batch": {"global_batch_size": GLOBAL_BATCH, "micro_batch_size": micro, "seq_length": SEQ},
        "optimizer": {"lr": LR, "min_lr": LR, "weight_decay": 0.1, "grad_clip": CLIP},
        "runtime": {"precision": "fp32", "attention_backend": "math"},
        "parallel": LAYOUTS[layout], "seed": 0, "nan_policy": "stop" if pipelined else "skip"})


def train(hf_dir: Path, layout: str, out: Path, first_step: int = 0, resume_tag: Path | None = None,
          save_at: tuple[int, ...] = (STEPS,)) -> dict[str, list[float]]:
    """Steps first_step .. STEPS-1 on `layout` from the HF weights, or from `resume_tag`; saves
    after the steps `save_at` into `out`, exports the last checkpoint to out/hf (rank 0)."""
    world, rank = dist.get_world_size(), dist.get_rank()
    run = run_config(hf_dir, layout, out)
    stage = zero_stage(layout)
    plan = run.plan(run.parallel.layout(world), {"zero_optimization": {"stage": stage}})
    config = run.model_config()
    manager = CheckpointManager(out, rank=rank, world_size=world, parallel=plan.layout, verify="sizes",
                                log=lambda text: None)
    point = manager.find_resume(str(resume_tag), config, zero_stage=stage) if resume_tag is not None else None
    engine = build_engine(run, plan, torch.device("cpu"), checkpoints=manager, resume=point)
    if point is not None:
        manager.load(engine.deepspeed_engine, point)
    data_rank = plan.layout.coordinates(rank).data
    losses, norms = [], []
    for step in range(first_step, STEPS):
        inputs, labels = (rows.chunk(plan.layout.data)[data_rank] for rows in batch(step, config.vocab_size))
        if engine.pipelined:
            micro = list(zip(inputs.chunk(PIPELINE_MICRO_BATCHES), labels.chunk(PIPELINE_MICRO_BATCHES)))
            loss = engine.pipeline_step(micro, LR).item()
        else:
            replica_loss = engine.loss(inputs, labels)
            engine.micro_step(replica_loss, LR)
            total = replica_loss.detach().clone()  # the global mean, on every rank (one replica)
            dist.all_reduce(total)
            loss = total.item() / world
        losses.append(loss)
        norms.append(engine.grad_norm())
        if step + 1 in save_at:
            state = TrainState(step=step + 1, consumed_samples=(step + 1) * GLOBAL_BATCH,
                               world=WorldLayout.of_run(plan.layout, stage, "fp32"))
            manager.save(engine.deepspeed_engine, config, state)
    engine.deepspeed_engine.destroy()
    if rank == 0:
        export_hf(out / tag_for_step(STEPS), out / "hf", dtype="float32", include_tokenizer=False)
    dist.barrier()
    return {"losses": losses, "grad_norms": norms}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--hf-root", type=Path, required=True, help="one HF directory per family")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--reference", action="store_true", help="one rank: every family, layout one")
    parser.add_argument("--reference-dir", type=Path, help="the --reference run's OUT_DIR (its checkpoints)")
    args = parser.parse_args()
    skip_inference_shm_allreduce()
    deepspeed.init_distributed(dist_backend="gloo")
    results = {}
    sources = {(family, source) for family, source, _ in RESUMES}
    for family, layouts in CASES.items():
        for layout in ("one",) if args.reference else layouts:
            save_at = SAVE_AT if (family, layout) in sources else SAVE_AT[-1:]
            results[f"{family}/{layout}"] = train(args.hf_root / family, layout,
                                                  args.out_dir / family / layout, save_at=save_at)
    for family, source, layout in () if args.reference else RESUMES:
        root = args.reference_dir if source == "one" else args.out_dir
        tag = root / family / source / tag_for_step(SAVE_AT[0])
        name = run_name(layout, source)
        results[f"{family}/{name}"] = train(args.hf_root / family, layout, args.out_dir / family / name,
                                            first_step=SAVE_AT[0], resume_tag=tag)
    finish_rank(args.out_dir, "runs", results)


if __name__ == "__main__":
    main()
    exit_fast(0)
