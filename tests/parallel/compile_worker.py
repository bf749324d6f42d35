"""Launched by tests/parallel/test_compile.py (gloo, CPU ranks): compiled blocks against eager.

For each case (a layout of parallel_worker.LAYOUTS, a ZeRO stage, optionally "ac0" and a
`runtime.compile_backend`, default inductor) the trainer's own engine
(`megatiny.training.engine.build_engine`, SDPA attention, activation checkpointing on every block
unless "ac0") trains STEPS
steps eagerly and then with `runtime.compile: true`, from the same initial weights and batches;
then both evaluate one batch (validation: no grad, evaluation mode). Recorded per case: losses,
gradient norms, the validation loss, and dynamo's counters of the compiled run after its first
step and after its last (graphs compiled, graph breaks and their reasons), so a test sees a graph
break and any recompile after the first step.

--resume (one rank): a compiled run of 2 steps saves a checkpoint, a fresh compiled engine loads
it and trains 2 more; the same with eager engines.

Every rank writes OUT_DIR/compile-rank<R>.json.
"""
from __future__ import annotations

import argparse
import os

import deepspeed
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from megatiny.parallel.process_group import skip_inference_shm_allreduce
from megatiny.process_env import exit_fast
from megatiny.training.engine import build_engine
from tests.helpers import finish_rank
from tests.parallel.parallel_worker import LR, PIPELINE_MICRO_BATCHES, batch, run_config, train_engine

STEPS = 4
MICRO_BATCHES = PIPELINE_MICRO_BATCHES  # of layout "one-accum2"
# Attention of every case and the resume. With SDPA the blocks' training graph on [2, 16]
# micro-batches is also the one the GPU script's smoke run compiles (benchmarks/gpu/run_all.py,
# tiny-test, seq 16, micro-batch 2), so when the suite has run that first into the same Inductor
# cache, the inductor cases here compile only their validation graph.
ATTENTION = "sdpa"


def dynamo_counts() -> dict:
    """Graphs compiled, frames traced, graph breaks (total and reasons) so far in this process."""
    breaks = counters["graph_break"]
    return {"graphs": counters["stats"]["unique_graphs"], "frames": counters["frames"]["total"],
            "graph_breaks": sum(breaks.values()), "break_reasons": sorted(breaks)[:8]}


def parse_case(case: str) -> tuple[str, int, dict]:
    """"LAYOUT:STAGE[:ac0][:BACKEND]" -> layout, ZeRO stage, the runtime settings of the case
    (BACKEND: `runtime.compile_backend`, which the eager run ignores). Attention: SDPA, what
    `attention_backend: auto` runs on CPU."""
    layout, stage, *rest = case.split(":")
    runtime = {"attention_backend": ATTENTION}
    if "ac0" in rest:
        runtime["activation_checkpointing"] = 0
    backends = [part for part in rest if part != "ac0"]
    if backends:
        runtime["compile_backend"] = backends[0]
    return layout, int(stage), runtime


def compiled_case(layout: str, stage: int, runtime: dict) -> dict:
    """Eager and compiled engines of one layout and stage: their losses, norms, validation loss
    and the compiled run's dynamo counts (after step 1 and at the end)."""
    result = {"eager": train_engine(layout, stage, steps=STEPS, validate=True, **runtime)}  # compile: false
    torch._dynamo.reset()
    counters.clear()
    first = {}

    def after_first_step(step: int) -> None:
        if step == 0:
            first.update(dynamo_counts())

    result["compiled"] = train_engine(layout, stage, steps=STEPS, after_step=after_first_step,
                                      validate=True, compile=True, **runtime)
    result["counts_first_step"] = first
    result["counts"] = dynamo_counts()
    return result


def accumulated_step(engine, step: int) -> float:
    """One optimizer step of layout "one-accum2" (one rank, MICRO_BATCHES micro-batches of
    `batch(step)`): the mean of their losses."""
    losses = []
    for inputs, labels in zip(*(rows.chunk(MICRO_BATCHES) for rows in batch(step))):
        loss = engine.loss(inputs, labels)
        engine.micro_step(loss, LR)
        losses.append(loss.item())
    return sum(losses) / len(losses)


def resumed_run(directory: str, compile: bool) -> dict:
    """One rank, ZeRO-1, layout "one-accum2" (the one-rank cases' shapes, so their compiled code
    is reused): 2 steps, a DeepSpeed checkpoint, then a fresh engine (and, compiled, a fresh
    dynamo: what a restarted process has, the on-disk compile cache aside) loads it and trains 2
    more. Losses and norms of the 2 resumed steps, and the dynamo/Inductor counters of the
    resumed part."""
    run = run_config("one-accum2", 1, compile=compile, attention_backend=ATTENTION)
    plan = run.plan(run.parallel.layout(1), {"zero_optimization": {"stage": 1}})
    engine = build_engine(run, plan, torch.device("cpu"))
    for step in range(2):
        accumulated_step(engine, step)
    engine.deepspeed_engine.save_checkpoint(directory, tag="step2")
    engine.deepspeed_engine.destroy()
    torch._dynamo.reset()
    counters.clear()
    engine = build_engine(run, plan, torch.device("cpu"))
    engine.deepspeed_engine.load_checkpoint(directory, tag="step2")
    losses, norms = [], []
    for step in range(2, 4):
        losses.append(accumulated_step(engine, step))
        norms.append(engine.grad_norm())
    engine.deepspeed_engine.destroy()
    return {"losses": losses, "grad_norms": norms, "counts": dynamo_counts(),
            "fx_cache_hits": counters["inductor"]["fxgraph_cache_hit"]
            + counters["aot_autograd"]["autograd_cache_hit"]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--cases", nargs="*", default=[], help="LAYOUT:STAGE[:ac0][:BACKEND]")
    parser.add_argument("--resume", action="store_true", help="also the resume check (one rank)")
    args = parser.parse_args()
    skip_inference_shm_allreduce()
    deepspeed.init_distributed(dist_backend="gloo")
    results = {}
    for case in args.cases:
        results[case] = compiled_case(*parse_case(case))
    if args.resume:
        for compile in (False, True):
            results[f"resume-compile-{compile}"] = resumed_run(os.path.join(args.out_dir, f"ckpt-{compile}"),
                                                               compile)
    finish_rank(args.out_dir, "compile", results)


if __name__ == "__main__":
    main()
    exit_fast(0)
