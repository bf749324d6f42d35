"""CheckpointManager: the one owner of saving, resuming and initialising from a checkpoint.

A save (every rank calls `save`):
  1. rank 0 removes leftovers of an earlier crashed save of the same tag;      barrier
  2. every rank writes its DeepSpeed shards and `rng_state_rank{R}.pt`;       barrier
  3. every rank writes `manifest_rank{R}.json`, sizes and CRC-32 of its share of the files
     (`megatiny.checkpoint.manifest`);                                        barrier
  4. rank 0 checks that all manifests exist, writes `megatiny.json` (the TrainState), then
     `latest` (temp + rename), then rotates (keep_last) once the new checkpoint's sizes verify;
                                                                               barrier
so a crash at any point leaves `latest` on the previous complete checkpoint.

Resuming with `resume: auto` verifies the newest complete checkpoint against its manifests
(`checkpoint.verify`: full | sizes | off; the ranks share the reading and agree on the verdict);
a damaged one is named file by file, renamed to `TAG.damaged`, and the next older complete
checkpoint is tried (`latest` is rewritten to the one that verifies).

A resume (`find_resume`, then `load` once the engine exists): the tag `checkpoint.resume`
selects (`megatiny.checkpoint.layout.resolve_resume`), its architecture checked against the
run's (plain `ModelConfig` equality), then one of (`megatiny.checkpoint.reshard.resume_mode`):
DeepSpeed's own load (same layout); for plain data parallelism on another number of ranks, the
conversion to DeepSpeed's universal format (rank 0, once, under ROOT/universal/TAG; the DeepSpeed
config must then say `checkpoint.load_universal`, `ResumePoint.universal`); for another tensor /
pipeline layout or ZeRO stage, megatiny's resharding of the full weights and Adam state.

The engine passed in is a DeepSpeed engine (`save_checkpoint` / `load_checkpoint`); the universal
conversion runs DeepSpeed's converter as a subprocess.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from megatiny.checkpoint import io, layout, manifest
from megatiny.checkpoint.load import load_model
from megatiny.checkpoint.metadata import METADATA_FILE, TrainState, WorldLayout, read_metadata, write_metadata
from megatiny.checkpoint.reshard import (
    ResumeMode,
    group_options,
    load_resharded,
    open_checkpoint,
    repair_universal_load,
    resume_mode,
)
from megatiny.model.config import ModelConfig, architecture_differences
from megatiny.parallel.process_group import barrier
from megatiny.parallel.state import ParallelLayout


@dataclass(frozen=True)
class ResumePoint:
    """A complete checkpoint to continue from, and how (`mode`, see `megatiny.checkpoint.reshard`).
    `load_root` is `root`, or ROOT/universal when the checkpoint was converted for this run's
    number of ranks (`universal`)."""

    root: Path
    tag: str
    metadata: dict[str, Any]
    load_root: Path
    mode: ResumeMode = ResumeMode.SAME

    @property
    def universal(self) -> bool:
        """Loaded from DeepSpeed's universal format (the DeepSpeed config must say so)."""
        return self.mode is ResumeMode.UNIVERSAL

    @property
    def state(self) -> TrainState:
        return self.metadata["train_state"]

    @property
    def tag_dir(self) -> Path:
        return self.root / self.tag


def check_architecture(found: ModelConfig, expected: ModelConfig, where: str) -> None:
    if found != expected:
        raise ValueError(f"{where}: the checkpoint's model config differs from this run's model config in "
                         f"{'; '.join(architecture_differences(found, expected))} (checkpoint != run)")


class CheckpointManager:
    """Checkpoints of one run under `save_dir` (None: a run that never saves).

    `rank` / `world_size`: this process in the job's process group. `log(text)` is called on
    rank 0 only, with one line per event (saved, converted, resumed). `parallel`: the run's
    model-parallel layout (default: data parallelism over `world_size` ranks); a checkpoint of
    any layout resumes on it (`megatiny.checkpoint.reshard.resume_mode`). `verify`: what saves
    record and resumes check (`megatiny.checkpoint.manifest.VERIFY_MODES`)."""

    def __init__(self, save_dir: str | os.PathLike | None, *, rank: int, world_size: int, keep_last: int = 0,
                 log: Callable[[str], None] = print, parallel: ParallelLayout | None = None,
                 verify: str = "full"):
        if verify not in manifest.VERIFY_MODES:
            raise ValueError(f"checkpoint.verify must be one of {manifest.VERIFY_MODES}, got {verify!r}")
        self.save_dir = Path(save_dir) if save_dir is not None else None
        self.rank, self.world_size, self.keep_last = rank, world_size, keep_last
        self.verify = verify
        self.parallel = parallel if parallel is not None else ParallelLayout(data=world_size)
        self._log = log

    def log(self, text: str) -> None:
        if self.rank == 0:
            self._log(text)

    # ---------------------------------------------------------------- save
    def save(self, engine: Any, model_config: ModelConfig, state: TrainState, *,
             tokenizer: str | os.PathLike | None = None, notes: dict[str, Any] | None = None,
             after_shards: Callable[[], None] | None = None) -> Path:
        """Save SAVE_DIR/step_N (N = state.step) on every rank and mark it complete; returns the tag dir.

        `after_shards` runs on every rank between writing its own files and the barrier that
        precedes marking the checkpoint complete (fault-injection tests kill a rank there)."""
        if self.save_dir is None:
            raise ValueError("checkpoint.save_dir is not set: nowhere to save")
        root, tag = self.save_dir, layout.tag_for_step(state.step)
        started = time.perf_counter()
        if self.rank == 0:
            root.mkdir(parents=True, exist_ok=True)
            io.prepare_tag_dir(root, tag)
        barrier()
        client_state = {"megatiny": {"step": state.step, "consumed_samples": state.consumed_samples,
                                     "world_size": self.world_size}}
        engine.save_checkpoint(str(root), tag=tag, client_state=client_state, save_latest=False)
        io.save_rng_state(root / tag, self.rank)
        if after_shards is not None:
            after_shards()
        barrier()
        names = manifest.listable_files(root / tag)
        manifest.write_manifest(root / tag, self.rank, self.world_size,
                                manifest.share_of(names, self.rank, self.world_size),
                                checksums=self.verify == "full")
        barrier()
        if self.rank == 0:
            self._check_manifests(root / tag)
            write_metadata(root / tag, model_config, tokenizer=tokenizer, state=state, notes=notes)
            io.write_latest(root, tag)
            deleted = self._rotate(root / tag)
            note = f" (removed {', '.join(deleted)})" if deleted else ""
            self.log(f"[megatiny] saved {root / tag} in {time.perf_counter() - started:.1f}s{note}")
        barrier()
        return root / tag

    def _check_manifests(self, tag_dir: Path) -> None:
        """Rank 0, before marking `tag_dir` complete: every rank's manifest is there."""
        missing = sorted(set(range(self.world_size)) - set(manifest.manifest_ranks(tag_dir)))
        if missing:
            raise RuntimeError(f"{tag_dir}: manifests of ranks {missing} are missing after the barrier; "
                               "the checkpoint is not marked complete")

    def _rotate(self, new_tag_dir: Path) -> list[str]:
        """keep_last rotation, only once the new checkpoint's files have their recorded sizes: an
        older checkpoint is never deleted for one that does not verify."""
        report = manifest.verify(new_tag_dir, "sizes")
        if not report.ok:
            self.log(f"[megatiny] WARNING: not rotating old checkpoints: {report.describe()}")
            return []
        return io.rotate(new_tag_dir.parent, self.keep_last)

    # ---------------------------------------------------------------- resume
    def find_resume(self, resume: str, model_config: ModelConfig, zero_stage: int | None = None
                    ) -> ResumePoint | None:
        """The checkpoint `resume` selects ("auto" | "none" | a root or tag path), verified
        (`verify`), checked against `model_config`, and how it continues on this run's layout
        and ZeRO stage `zero_stage`; converted to the universal format (rank 0; all ranks wait)
        when DeepSpeed's universal checkpoint is the way. With "auto", a damaged checkpoint is
        set aside and the next older complete one tried. None: start fresh. Every rank calls
        this."""
        found = layout.resolve_resume(resume, self.save_dir)
        if found is None:
            return None
        root, tag = found
        if resume == "auto":
            tag = self._newest_verified(root, tag)
        elif not self._verified(root / tag):
            raise RuntimeError(f"checkpoint.resume={resume!r}: {root / tag} does not verify against its "
                               "manifests (the damaged files are listed above); pick another checkpoint")
        metadata = read_metadata(root / tag)
        check_architecture(metadata["model"], model_config, str(root / tag))
        world = metadata["train_state"].world
        mode = resume_mode(world, self.parallel, zero_stage)
        if mode is ResumeMode.UNIVERSAL:
            self.log(f"[megatiny] checkpoint {root / tag} was made with {world.world_size} ranks, this run "
                     f"has {self.world_size}: converting it to DeepSpeed's universal format")
            if self.rank == 0:
                convert_to_universal(root, tag)
            barrier()
        elif mode is ResumeMode.RESHARD:
            self.log(f"[megatiny] checkpoint {root / tag} was written by {world.describe()}, ZeRO-"
                     f"{world.zero_stage}; this run is {WorldLayout.of_run(self.parallel).describe()}, "
                     f"ZeRO-{zero_stage}: resharding its weights and optimizer state")
        load_root = root / layout.UNIVERSAL_DIR if mode is ResumeMode.UNIVERSAL else root
        return ResumePoint(root, tag, metadata, load_root, mode)

    def _verified(self, tag_dir: Path) -> bool:
        """Whether `tag_dir` verifies, agreed by all ranks: each checks its share of the manifests
        (rank 0 also that none is missing) and prints what it found damaged."""
        if self.verify == "off":
            return True
        ranks = manifest.manifest_ranks(tag_dir)
        mine = manifest.share_of(ranks, self.rank, self.world_size)
        report = manifest.verify(tag_dir, self.verify, ranks=mine)
        if self.rank == 0 and ranks:
            report.problems = manifest.missing_manifests(tag_dir, ranks) + report.problems
        if report.legacy:
            self.log(f"[megatiny] {report.describe()}")
        if not report.ok:
            print(f"[megatiny] rank {self.rank}: checkpoint {report.describe()}", flush=True)
        return _all_ranks_agree(report.ok)

    def _newest_verified(self, root: Path, latest: str) -> str:
        """`latest`, or the newest older complete checkpoint that verifies. Once one is found,
        rank 0 points `latest` at it and only then renames the damaged newer ones to TAG.damaged
        (a crash in between leaves a valid `latest`). RuntimeError when none verifies."""
        newest = layout.step_of_tag(latest)
        candidates = [t for t in reversed(layout.list_tags(root))  # `latest` even if a file it needs is gone
                      if t == latest or (layout.step_of_tag(t) < newest and layout.is_complete_tag(root / t))]
        damaged = []
        for tag in candidates:
            if not (root / tag / METADATA_FILE).is_file():  # the same answer on every rank
                self.log(f"[megatiny] checkpoint {root / tag} is damaged: {METADATA_FILE}: missing")
                damaged.append(tag)
                continue
            if not self._verified(root / tag):
                self.log(f"[megatiny] checkpoint {root / tag} is damaged (see above)")
                damaged.append(tag)
                continue
            if damaged:
                self.log(f"[megatiny] falling back to {root / tag}, the newest checkpoint that verifies; "
                         f"setting aside {', '.join(t + '.damaged' for t in damaged)}")
                if self.rank == 0:
                    io.write_latest(root, tag)
                    for bad in damaged:
                        io.set_aside(root, bad)
                barrier()
            return tag
        raise RuntimeError(f"no complete checkpoint in {root} verifies against its manifests (the damaged "
                           "files are listed above); to start over set checkpoint.resume=none")

    def rewind_point(self, max_step: int) -> ResumePoint:
        """The newest complete checkpoint of this run at step <= `max_step` that verifies, for a
        rewind within the running job (same layout). Rank 0 points `latest` at it and renames
        the newer checkpoints TAG.rewound (they hold the batches the rewind skips), so a later
        `resume: auto` continues from the rewind, not from them. Every rank calls this."""
        root = self.save_dir
        if root is None:
            raise ValueError("a rewind needs checkpoint.save_dir")
        tags = [t for t in reversed(layout.list_tags(root))
                if layout.step_of_tag(t) <= max_step and layout.is_complete_tag(root / t)]
        tag = next((t for t in tags if self._verified(root / t)), None)
        if tag is None:
            raise RuntimeError(f"spike.policy rewind: no checkpoint in {root} at step {max_step} or before "
                               "verifies, nothing to rewind to; save more often (checkpoint.save_interval) "
                               "or keep more (checkpoint.keep_last)")
        newer = [t for t in layout.list_tags(root) if layout.step_of_tag(t) > layout.step_of_tag(tag)]
        barrier()  # every rank has read the tags before rank 0 renames any
        if self.rank == 0:
            io.write_latest(root, tag)
            for skipped in newer:
                io.set_aside(root, skipped, reason="rewound")
        barrier()
        return ResumePoint(root, tag, read_metadata(root / tag), root)

    def load(self, engine: Any, point: ResumePoint) -> TrainState:
        """Load weights, optimizer and DeepSpeed state of `point` into `engine` (built with
        `checkpoint.load_universal = point.universal`) and this rank's RNG states. A resharded
        resume (another layout) restores weights and Adam state; RNG streams stay seeded (ranks
        have other roles now)."""
        if point.mode is ResumeMode.RESHARD:
            model = point.metadata["model"]
            source = open_checkpoint(point.tag_dir, point.state.world, model.num_layers)
            load_resharded(engine, source, tensor_rank=self.parallel.coordinates(self.rank).tensor,
                           tensor_size=self.parallel.tensor, pipelined=self.parallel.pipeline > 1,
                           num_layers=model.num_layers)
            barrier()
        else:
            options = group_options(engine)
            path, _ = engine.load_checkpoint(str(point.load_root), tag=point.tag, load_optimizer_states=True,
                                             load_lr_scheduler_states=False)
            if path is None:
                raise RuntimeError(f"DeepSpeed could not load the checkpoint {point.load_root / point.tag}")
            if point.universal:
                repair_universal_load(engine, options)
            io.load_rng_state(point.tag_dir, self.rank)  # False (kept seeded) for ranks it did not have
        state = point.state
        self.log(f"[megatiny] resumed from {point.tag_dir}: step {state.step}, "
                 f"{state.consumed_samples} samples consumed")
        return state

    # ---------------------------------------------------------------- init_from
    def initial_weights(self, path: str | os.PathLike, model_config: ModelConfig, *,
                        every_rank: bool = False) -> dict[str, torch.Tensor] | None:
        """`checkpoint.init_from`: full fp32 tensors of the model at `path` (any format
        `megatiny.checkpoint.load_model` reads), on rank 0; None on the other ranks unless
        `every_rank` (a split model: each rank then takes its own part)."""
        if self.rank != 0 and not every_rank:
            return None
        model, metadata = load_model(path, dtype=torch.float32, device="cpu")
        check_architecture(metadata["model"], model_config, f"checkpoint.init_from={path}")
        self.log(f"[megatiny] initialised the weights from {path} (optimizer starts fresh)")
        return {name: param.detach() for name, param in model.named_parameters()}


def _all_ranks_agree(ok: bool) -> bool:
    """True when `ok` on every rank (a sum over the ranks; `ok` itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()):
        return ok
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" \
        else torch.device("cpu")
    flag = torch.tensor([0.0 if ok else 1.0], dtype=torch.float64, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.SUM)
    return flag.item() == 0.0


def universal_conversion_timeout_s(checkpoint: Path) -> float:
    """How long DeepSpeed's converter may take: 10 minutes plus 5 minutes per GiB of checkpoint
    (it reads and rewrites every fp32 weight and Adam moment once)."""
    size = sum(f.stat().st_size for f in checkpoint.rglob("*") if f.is_file())
    return 600.0 + 300.0 * size / 2**30


def convert_to_universal(root: str | os.PathLike, tag: str) -> Path:
    """Convert ROOT/TAG to DeepSpeed's universal format at ROOT/universal/TAG (once; rank 0 only).

    The universal format stores each parameter's fp32 weights and Adam moments whole, so a run
    can continue on a different number of data-parallel ranks with its optimizer state."""
    root = Path(root)
    out = layout.universal_dir(root, tag)
    if (out / METADATA_FILE).is_file():
        return out
    tmp = out.with_name(f".{tag}.converting")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.parent.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder", str(root / tag),
           "--output_folder", str(tmp), "--num_extract_workers", "1", "--num_merge_workers", "1"]
    limit_s = universal_conversion_timeout_s(root / tag)
    try:
        result = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                timeout=limit_s)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"converting {root / tag} to a universal checkpoint took over {limit_s:.0f} s; "
                           f"stopped (the partial output {tmp} is removed on the next try)") from None
    if result.returncode != 0:
        raise RuntimeError(f"converting {root / tag} to a universal checkpoint failed:\n"
                           f"{result.stdout[-3000:]}")
    shutil.copy2(root / tag / METADATA_FILE, tmp / METADATA_FILE)
    os.replace(tmp, out)
    return out
