"""Launched by tests/parallel/test_exactness.py with the `deepspeed` launcher (gloo, CPU ranks).

--check model: for each layout, a parallel GPT against the one-rank GPT built with the same seed,
inside this process (no DeepSpeed engine): initial weights, logits, loss and every gradient.

--check engines: for each layout and ZeRO stage, the trainer's own engine
(`megatiny.training.engine.build_engine`: the DeepSpeed config, `zero.Init` for ZeRO-3, the
`mpu`, `deepspeed.initialize`, DeepSpeed's pipeline engine for pipelines) trains 8 steps of AdamW
with gradient clipping and activation checkpointing on fixed batches; the global losses and
DeepSpeed's gradient norms are written out. Run with one rank and layout "one" it is the
reference.

--check groups (or --also-groups): this rank's process groups and mpu answers for layouts that
use every pair of axes.

Every rank writes OUT_DIR/<check>-rank<R>.json.
"""
from __future__ import annotations

import argparse

import deepspeed
import torch
import torch.distributed as dist

from megatiny.checkpoint.partition import partition_dim, shard_state_dict
from megatiny.data.document_mask import DocumentInputs, DocumentMasking, document_inputs
from megatiny.model import GPT, ModelRuntime, get_preset
from megatiny.model.generate import generate
from megatiny.parallel.context_parallel import split_for_context
from megatiny.parallel.process_group import skip_inference_shm_allreduce
from megatiny.parallel.state import DeepSpeedMPU, ParallelLayout, ParallelState
from megatiny.parallel.tensor_parallel import shard
from megatiny.process_env import exit_fast
from megatiny.training.config import RunConfig
from megatiny.training.engine import build_engine, param_groups
from tests.helpers import finish_rank

GLOBAL_BATCH, SEQ = 4, 16
STEPS, LR, CLIP = 8, 1e-3, 0.5
# name -> the layout's sizes; the data size follows from the world size.
LAYOUTS = {"one": {}, "tp2": {"tensor": 2}, "tp2-sp": {"tensor": 2, "sequence_parallel": True},
           "cp2": {"context": 2}, "pp2": {"pipeline": 2}, "pp2-tp2": {"pipeline": 2, "tensor": 2},
           "tp2-cp2": {"tensor": 2, "context": 2},
           "tp2-sp-cp2": {"tensor": 2, "context": 2, "sequence_parallel": True},
           "one-accum2": {}}
PIPELINE_MICRO_BATCHES = 2  # (also the accumulation of "one-accum2", the pipelines' reference)


MATH = ModelRuntime(attention_backend="math")


def model_config(tie: bool = False, query_groups: int = 2):
    return get_preset("tiny-test", num_layers=2, tie_word_embeddings=tie, num_query_groups=query_groups)


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The global batch of `step` (two batches, alternating, to be memorized): inputs and
    already-shifted labels, Long[GLOBAL_BATCH, SEQ]."""
    tokens = torch.randint(0, 512, (GLOBAL_BATCH, SEQ + 1), generator=torch.Generator().manual_seed(step % 2))
    return tokens[:, :-1], tokens[:, 1:]


EOD = 2
DOCUMENTS = DocumentMasking(EOD, reset_attention_mask=True, reset_position_ids=True, eod_mask_loss=True)


def packed_batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`batch(step)` with about one token in five made EOD (documents of a few tokens, some
    consecutive EODs), for the document options."""
    tokens = torch.randint(0, 512, (GLOBAL_BATCH, SEQ + 1), generator=torch.Generator().manual_seed(step % 2))
    eods = torch.rand(tokens.shape, generator=torch.Generator().manual_seed(100 + step % 2)) < 0.2
    tokens = tokens.masked_fill(eods, EOD)
    return tokens[:, :-1], tokens[:, 1:]


def local_batch(state: ParallelState, tensor: torch.Tensor) -> torch.Tensor:
    """This rank's rows (data rank) and sequence slice (context rank)."""
    rows = tensor.chunk(state.layout.data, dim=0)[state.data_rank]
    return split_for_context(rows, state.context_rank, state.layout.context)


def make_layout(name: str, world: int) -> ParallelLayout:
    return ParallelLayout.for_world(world, **LAYOUTS[name])


def rel_diff(ours: torch.Tensor, reference: torch.Tensor) -> float:
    """max |ours - reference| / max |reference| (normwise relative difference)."""
    scale = reference.abs().max().clamp(min=1e-30)
    return float((ours.double() - reference.double()).abs().max() / scale)


def check_model(layout_name: str, tie: bool, documents: bool = False) -> dict[str, float]:
    """Largest relative differences of a parallel GPT against the one-rank GPT (same seed).
    `documents`: a packed batch with the three document options on."""
    state = ParallelState(make_layout(layout_name, dist.get_world_size()))
    t, c = state.layout.tensor, state.layout.context
    config = model_config(tie, query_groups=max(2, t * c))  # every (tensor, context) rank: a group
    torch.manual_seed(0)
    reference = GPT(config, runtime=MATH)
    torch.manual_seed(0)
    model = GPT(config, state, runtime=MATH)
    expected = shard_state_dict(reference.state_dict(), state.tensor_rank, t)
    weights = max(rel_diff(v, expected[k]) for k, v in model.state_dict().items())
    inputs, labels = packed_batch(0) if documents else batch(0)
    doc = document_inputs(inputs, DOCUMENTS if documents else None)
    mine = lambda x: split_for_context(x, state.context_rank, c)  # noqa: E731
    my_inputs, my_labels = mine(inputs), mine(labels)
    ref_extra = {"position_ids": doc.position_ids, "document_ids": doc.document_ids}
    my_extra = {"position_ids": mine(doc.position_ids), "document_ids": doc.document_ids}
    with torch.no_grad():
        logits = rel_diff(model(my_inputs, **my_extra),
                          split_for_context_logits(reference(inputs, **ref_extra), state.context_rank, c))
    ref_loss = reference(inputs, labels=labels, loss_mask=doc.loss_mask, **ref_extra)
    ref_loss.backward()
    loss = model(my_inputs, labels=my_labels, loss_mask=mine(doc.loss_mask), **my_extra)
    loss.backward()
    grads = 0.0
    for name, param in model.named_parameters():
        grad = param.grad
        if c > 1:  # each context rank holds its slices' share, scaled by c (see context_parallel)
            grad = grad.clone()
            dist.all_reduce(grad, group=state.context_group)
            grad /= c
        full = dict(reference.named_parameters())[name].grad
        dim = partition_dim(name)
        want = full if dim is None or t == 1 else shard(full, dim, state.tensor_rank, t)
        grads = max(grads, rel_diff(grad, want))
    result = {"weights": weights, "logits": logits,
              "loss": rel_diff(loss.detach(), ref_loss.detach()), "grads": grads}
    if not state.sequence_parallel and c == 1 and not documents:  # generation: tensor parallelism alone
        prompt = inputs[:, :5]
        result["same_generation"] = torch.equal(generate(model, prompt, 6), generate(reference, prompt, 6))
    return result


def split_for_context_logits(logits: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    return logits.chunk(size, dim=1)[rank]


def ds_config(stage: int, micro_batch: int) -> dict:
    """The DeepSpeed config of `deepspeed_sequence_parallel_norms`'s own engines (fp32)."""
    return {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": CLIP,
        "zero_optimization": {"stage": stage},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 10**12,
    }


def run_config(layout_name: str, world: int, bf16: bool = False, **runtime) -> RunConfig:
    """The run config of an engine check: the tiny model, GLOBAL_BATCH sequences of SEQ tokens per
    step (pipelines: PIPELINE_MICRO_BATCHES micro-batches), AdamW at LR with torch's default betas
    and weight decay 0.1 on matrices, clipping at CLIP, activation checkpointing on every block
    (the recompute repeats the collectives), seed 0; `runtime`: other runtime settings."""
    sizes = LAYOUTS[layout_name]
    data = make_layout(layout_name, world).data
    pipelined = sizes.get("pipeline", 1) > 1
    split = pipelined or layout_name.endswith("accum2")
    micro = GLOBAL_BATCH // (data * (PIPELINE_MICRO_BATCHES if split else 1))
    return RunConfig.from_dict({
        "model": {"preset": "tiny-test", "num_layers": 2},
        "batch": {"global_batch_size": GLOBAL_BATCH, "micro_batch_size": micro, "seq_length": SEQ},
        "optimizer": {"lr": LR, "min_lr": LR, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8,
                      "weight_decay": 0.1, "grad_clip": CLIP},
        "runtime": {"precision": "bf16" if bf16 else "fp32", "attention_backend": "math",
                    "activation_checkpointing": 1, **runtime},
        "parallel": sizes, "seed": 0, "nan_policy": "stop" if pipelined else "skip"})


def train_engine(layout_name: str, stage: int, bf16: bool = False, documents: bool = False,
                 steps: int = STEPS, after_step=None, validate: bool = False,
                 **runtime) -> dict[str, list[float]]:
    """Global losses and gradient norms of STEPS steps of the trainer's engine
    (`megatiny.training.engine.build_engine`) under this layout and ZeRO stage; pipelines step
    through DeepSpeed's pipeline engine, starting from the one-rank GPT's initial weights. A
    combination the run config refuses raises its ValueError (before any collective).
    `documents`: packed batches with the three document options on (the loop's `DocumentInputs`
    through `Engine.loss`); `steps` instead of STEPS, `runtime`: other runtime settings;
    `after_step(step)` is called after each step; `validate`: also "valid_loss", the engine's
    `evaluate` of one micro-batch of step 0's batch after the last step."""
    world = dist.get_world_size()
    run = run_config(layout_name, world, bf16, **runtime)
    plan = run.plan(run.parallel.layout(world), {"zero_optimization": {"stage": stage}})
    engine = build_engine(run, plan, torch.device("cpu"))
    layout, rank = plan.layout, dist.get_rank()
    losses, norms = [], []
    for step in range(steps):
        make = packed_batch if documents else batch
        data_rank = layout.coordinates(rank).data
        inputs, labels = (rows.chunk(layout.data)[data_rank] for rows in make(step))
        document = document_inputs(inputs, DOCUMENTS) if documents else DocumentInputs()
        if engine.pipelined:  # mean over micro-batches and replicas, on every stage
            micro = [(ids, lab, document_inputs(ids, DOCUMENTS) if documents else DocumentInputs())
                     for ids, lab in zip(inputs.chunk(PIPELINE_MICRO_BATCHES),
                                         labels.chunk(PIPELINE_MICRO_BATCHES))]
            loss = engine.pipeline_step(micro, LR).item()
        else:  # one micro-batch per step, or PIPELINE_MICRO_BATCHES for "one-accum2"
            parts = run.batch.global_batch_size // (run.batch.micro_batch_size * layout.data)
            total = torch.zeros(())
            for rows in torch.arange(inputs.shape[0]).chunk(parts):
                piece = DocumentInputs(*(t[rows] if t is not None else None for t in
                                         (document.position_ids, document.document_ids, document.loss_mask)))
                replica_loss = engine.loss(inputs[rows], labels[rows], piece)
                engine.micro_step(replica_loss, LR)
                total += replica_loss.detach() / parts  # equal on the tensor/context ranks of a replica
            dist.all_reduce(total)
            loss = total.item() / world
        losses.append(loss)
        norms.append(engine.grad_norm())
        if after_step is not None:
            after_step(step)
    result = {"losses": losses, "grad_norms": norms}
    if validate:
        inputs, labels = (rows.chunk(layout.data)[layout.coordinates(rank).data][:run.batch.micro_batch_size]
                          for rows in batch(0))
        result["valid_loss"] = engine.evaluate([(inputs, labels)])
    engine.deepspeed_engine.destroy()
    return result


class _DeepSpeedSequenceParallelMPU(DeepSpeedMPU):
    """The route megatiny does NOT take: context ranks given to DeepSpeed as its own sequence-
    parallel groups (data-parallel group = data ranks only)."""

    def get_data_parallel_group(self):
        return self._group("data")

    def get_data_parallel_rank(self) -> int:
        return self._rank_in("data")

    def get_data_parallel_world_size(self) -> int:
        return self._size("data")

    def get_data_parallel_group_ranks(self) -> list[int]:
        return list(self.state.group_members["data"])

    def get_sequence_parallel_group(self):
        return self._group("context")

    def get_sequence_parallel_rank(self) -> int:
        return self._rank_in("context")

    def get_sequence_parallel_world_size(self) -> int:
        return self._size("context")

    def get_sequence_data_parallel_group(self):
        return self._group("data_context")

    def get_sequence_data_parallel_rank(self) -> int:
        return self._rank_in("data_context")

    def get_sequence_data_parallel_world_size(self) -> int:
        return self._size("data_context")


class _ShareOfMean(torch.autograd.Function):
    """All-reduced loss value with an identity backward: each context rank's gradient is its share."""

    @staticmethod
    def forward(ctx, loss, group):
        total = loss.detach().clone()
        dist.all_reduce(total, group=group)
        return total

    @staticmethod
    def backward(ctx, grad):
        return grad, None


def deepspeed_sequence_parallel_norms() -> dict[str, float]:
    """Step-0 gradient norms of CP2 through DeepSpeed's own sequence-parallel route, ZeRO-1 and 3.

    With each rank's loss its share of the mean (so the correct gradient is the sum over context
    ranks), ZeRO-1 gets the one-rank norm and ZeRO-3 half of it: DeepSpeed 0.19.8 sums over
    sequence ranks in one and averages in the other, which is why `DeepSpeedMPU` presents context
    ranks as data-parallel ranks instead."""
    import megatiny.parallel.context_parallel as context_parallel

    original = context_parallel.sum_loss_over_context
    context_parallel.sum_loss_over_context = lambda loss, group: _ShareOfMean.apply(loss, group)
    norms = {}
    try:
        for stage in (1, 3):
            state = ParallelState(make_layout("cp2", dist.get_world_size()))
            mpu = _DeepSpeedSequenceParallelMPU(state)
            config = ds_config(stage, GLOBAL_BATCH // state.layout.data)
            torch.manual_seed(0)
            with deepspeed.zero.Init(data_parallel_group=mpu.get_sequence_data_parallel_group(), mpu=mpu,
                                     config_dict_or_path=config, enabled=stage == 3):
                model = GPT(model_config(), state, runtime=MATH)
            optimizer = torch.optim.AdamW(param_groups(model, 0.1), lr=LR)
            engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, config=config, mpu=mpu)
            inputs, labels = batch(0)
            engine.backward(engine(local_batch(state, inputs), labels=local_batch(state, labels)))
            engine.step()
            norms[f"zero{stage}"] = float(engine.get_global_grad_norm())
            engine.destroy()
    finally:
        context_parallel.sum_loss_over_context = original
    return norms


def record_groups() -> dict[str, dict]:
    """For layouts using every axis pair, this rank's group members and what its mpu reports."""
    world = dist.get_world_size()
    out = {}
    for name, sizes in {"t2d2": dict(tensor=2), "t2c2": dict(tensor=2, context=2),
                        "t2p2": dict(tensor=2, pipeline=2), "c2p2": dict(context=2, pipeline=2)}.items():
        state = ParallelState(ParallelLayout.for_world(world, **sizes))
        mpu = state.mpu()
        out[name] = {
            "members": state.group_members,
            "mpu": {
                "model": [mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size()],
                "tensor": [mpu.get_tensor_model_parallel_rank(), mpu.get_tensor_model_parallel_world_size(),
                           mpu.get_tensor_model_parallel_src_rank()],
                "data": [mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size(),
                         mpu.get_data_parallel_group_ranks()],
                "pipeline": [mpu.get_pipeline_model_parallel_rank(),
                             mpu.get_pipeline_model_parallel_world_size()],
            },
        }
        # The groups really connect those ranks: sum each rank's id over each group.
        out[name]["sums"] = {}
        for group_name, members in state.group_members.items():
            value = torch.tensor([float(dist.get_rank())])
            dist.all_reduce(value, group=state.groups[group_name])
            out[name]["sums"][group_name] = [value.item(), float(sum(members))]
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--local_rank", type=int, default=-1)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--check", choices=("model", "engines", "groups"), required=True)
    parser.add_argument("--layouts", nargs="*", default=[])
    parser.add_argument("--stages", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--also-groups", action="store_true", help="also record process groups")
    parser.add_argument("--also-model", nargs="*", default=[], help="also model-level check these layouts")
    parser.add_argument("--also-bf16", nargs="*", default=[], help="also train these in bf16, ZeRO-1")
    parser.add_argument("--also-documents", nargs="*", default=[],
                        help="model check: also these layouts with packed documents (document "
                             "options on); engines: also train these with them, ZeRO-1 and 3")
    parser.add_argument("--also-deepspeed-sp", action="store_true",
                        help="also measure CP2 through DeepSpeed's own sequence-parallel groups")
    args = parser.parse_args()
    skip_inference_shm_allreduce()
    deepspeed.init_distributed(dist_backend="gloo")
    results: dict[str, object] = {}
    for name in args.layouts:
        if args.check == "model":
            results[name] = check_model(name, tie=False)
            if LAYOUTS[name].get("tensor", 1) > 1:
                results[f"{name}-tied"] = check_model(name, tie=True)
        elif args.check == "engines":
            for stage in args.stages:
                try:
                    results[f"{name}-zero{stage}"] = train_engine(name, stage)
                except ValueError as refused:  # a combination the model refuses (same on every rank)
                    results[f"{name}-zero{stage}"] = {"refused": str(refused)}
    for name in args.also_documents:
        if args.check == "model":
            results[f"{name}-documents"] = check_model(name, tie=False, documents=True)
        else:
            for stage in (1,) if LAYOUTS[name].get("pipeline", 1) > 1 or "accum" in name else (1, 3):
                results[f"{name}-documents-zero{stage}"] = train_engine(name, stage, documents=True)
    for name in args.also_bf16:
        results[f"{name}-zero1-bf16"] = train_engine(name, 1, bf16=True)
    if args.also_deepspeed_sp:
        results["deepspeed-sp-cp2"] = deepspeed_sequence_parallel_norms()
    for name in args.also_model:
        results[f"model-{name}"] = check_model(name, tie=False)
    if args.check == "groups" or args.also_groups:
        results["groups"] = record_groups()
    finish_rank(args.out_dir, args.check, results)


if __name__ == "__main__":
    main()
    exit_fast(0)
