"""The pretraining loop: data -> DeepSpeed engine -> logs and checkpoints, with exact resume.

One optimizer step = `gradient_accumulation_steps` micro-batches on every data-parallel rank
(`batch.global_batch_size` samples in all). The learning rate is a pure function of the step, and
the data position is `consumed_samples`, so a resumed run continues exactly where it stopped.

Non-finite loss (bf16 and fp32 have no loss scaler; fp16's skips overflowing steps itself):
every micro-batch loss is summed across ranks before its backward pass, so all ranks agree.
`nan_policy: stop` raises `NonFiniteLoss`; `skip` drops that micro-batch from the gradient on every
rank, and when no micro-batch of the step is finite the update is taken with learning rate 0
(parameters unchanged; Adam's moments decay one step).
"""
from __future__ import annotations

import math
import os
import random
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from megatiny.checkpoint import io as ckpt_io
from megatiny.checkpoint.metadata import read_metadata, write_metadata
from megatiny.precision import warn_if_emulated
from megatiny.training import engine as ds_engine
from megatiny.training.config import RunConfig
from megatiny.training.flops import peak_tflops_for, throughput
from megatiny.training.logging import MetricsLogger, console_line, memory_gb
from megatiny.training.schedule import learning_rate

# Test hooks (integration tests of crash and NaN handling; never set them in real runs).
KILL_AT_SAVE_ENV = "MEGATINY_TEST_KILL_RANK1_AT_SAVE"  # step whose save rank 1 dies in (SIGKILL)
NAN_AT_STEP_ENV = "MEGATINY_TEST_NAN_AT_STEP"          # step whose losses are made NaN
SIGTERM_AT_STEP_ENV = "MEGATINY_TEST_SIGTERM_AT_STEP"  # rank 0 sends itself SIGTERM after this step


class NonFiniteLoss(RuntimeError):
    """Raised with nan_policy=stop when a loss is NaN or infinite."""


@dataclass
class TrainResult:
    step: int
    consumed_samples: int
    stopped_by_signal: bool = False
    skipped_steps: int = 0
    losses: list[float] = field(default_factory=list)


class _StopFlag:
    """SIGTERM/SIGINT set a flag; the loop checks it (agreed across ranks) after each step."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    def _handle(self, signum, frame) -> None:
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _same_architecture(a, b) -> bool:
    """Model configs equal up to runtime-only choices (attention kernel, activation checkpointing)."""
    runtime = ("attention_backend", "activation_checkpointing")
    strip = lambda c: {k: v for k, v in c.to_dict().items() if k not in runtime}  # noqa: E731
    return strip(a) == strip(b)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(run: RunConfig) -> TrainResult:
    """Run (or resume) training as configured. Every rank calls this; it returns on every rank."""
    dist_info = ds_engine.init_distributed(run.distributed)
    stop = _StopFlag()
    try:
        return _Trainer(run, dist_info, stop).execute()
    finally:
        stop.restore()
        ds_engine.shutdown()


class _Trainer:
    def __init__(self, run: RunConfig, dist_info: ds_engine.DistInfo, stop: _StopFlag):
        self.run, self.dist, self.stop = run, dist_info, stop
        self.rank, self.world = dist_info.rank, dist_info.world_size
        self.model_config = run.model_config()
        save_dir = run.checkpoint.save_dir
        log = run.logging
        tb_dir = log.tensorboard_dir or (str(Path(save_dir) / "tensorboard") if save_dir else None)
        metrics_file = log.metrics_file or (str(Path(save_dir) / "metrics.jsonl") if save_dir else None)
        self.logger = MetricsLogger(self.rank, tb_dir if log.tensorboard else None, metrics_file)
        self.skipped_steps = 0

    # ---------------------------------------------------------------- setup
    def _resume_point(self) -> tuple[Path, str, dict[str, Any]] | None:
        found = ckpt_io.resolve_resume(self.run.checkpoint.resume, self.run.checkpoint.save_dir)
        if found is None:
            return None
        root, tag = found
        meta = read_metadata(root / tag)
        if not _same_architecture(meta["model"], self.model_config):
            raise ValueError(f"{root / tag}: the checkpoint's model config differs from this run's model "
                             f"config:\n  checkpoint: {meta['model']}\n  run:        {self.model_config}")
        return root, tag, meta

    def _init_state(self) -> dict[str, torch.Tensor] | None:
        path = self.run.checkpoint.init_from
        if path is None or self.rank != 0:
            return None
        from megatiny.checkpoint import load_model
        model, meta = load_model(path, dtype=torch.float32, device="cpu")
        if not _same_architecture(meta["model"], self.model_config):
            raise ValueError(f"checkpoint.init_from={path}: its model config differs from this run's:\n"
                             f"  init_from: {meta['model']}\n  run:       {self.model_config}")
        self.logger.print(f"[megatiny] initialised the weights from {path} (optimizer starts fresh)")
        return {name: param.detach() for name, param in model.named_parameters()}

    def _build_data(self, accumulation: int):
        from megatiny.data import build_gpt_datasets
        from megatiny.data.config import DataConfig

        run = self.run
        data_config = DataConfig.from_dict(run.data)
        train_samples = run.schedule.train_steps * run.batch.global_batch_size
        valid_samples = (run.logging.eval_iters * run.batch.micro_batch_size * self.world
                         if run.logging.eval_interval else 0)
        build = lambda: build_gpt_datasets(data_config, run.batch.seq_length,  # noqa: E731
                                           (train_samples, valid_samples, 0), run.seed,
                                           vocab_size=self.model_config.vocab_size)
        # Rank 0 builds and caches the sample indices; the others then load them from the cache.
        if self.rank == 0:
            datasets = build()
        ds_engine.barrier()
        if self.rank != 0:
            datasets = build()
        return datasets[0], datasets[1]

    # ---------------------------------------------------------------- batches
    def _batch(self, dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        samples = torch.from_numpy(np.stack([dataset[i] for i in indices]))  # int64 samples
        return samples[:, :-1], samples[:, 1:]

    # ---------------------------------------------------------------- main
    def execute(self) -> TrainResult:
        run, rank = self.run, self.rank
        seed_everything(run.seed)
        from megatiny.data.config import DataConfig
        from megatiny.data.sidecar import check_data_vocab
        # Before any engine starts: data tokenized with a larger vocabulary than the model's fails here.
        check_data_vocab(DataConfig.from_dict(run.data), self.model_config.vocab_size)
        resume = self._resume_point()
        ds_file = ds_engine.read_ds_file(run.distributed.deepspeed_config)
        load_root = None
        universal = False
        if resume is not None:
            root, tag, meta = resume
            universal = int(meta["extra"].get("world_size", self.world)) != self.world
            load_root = root
            if universal:
                if rank == 0:
                    self.logger.print(f"[megatiny] checkpoint {root / tag} was made with "
                                      f"{meta['extra'].get('world_size')} ranks, this run has {self.world}: "
                                      "converting it to DeepSpeed's universal format")
                    ds_engine.convert_to_universal(root, tag)
                ds_engine.barrier()
                load_root = root / ckpt_io.UNIVERSAL_DIR
        self.precision = ds_engine.run_precision(run, self.dist.device)
        warn_if_emulated(self.precision, self.logger.print)
        ds_config = ds_engine.build_ds_config(run, ds_file, self.world, self.precision,
                                              load_universal=universal,
                                              source=run.distributed.deepspeed_config)
        self.ds_config = ds_config
        init_weights = resume is None and run.checkpoint.init_from is not None
        self.engine = ds_engine.TrainingEngine(run, self.model_config, ds_config, self.dist,
                                               init_state=self._init_state() if init_weights else None,
                                               init_weights=init_weights)
        step, consumed = 0, 0
        if resume is not None:
            root, tag, meta = resume
            self.engine.load(load_root, tag)
            step, consumed = int(meta["step"]), int(meta["consumed_samples"])
            self.skipped_steps = int(meta["extra"].get("skipped_steps", 0))
            ckpt_io.load_rng_state(root / tag, rank)
            self.logger.print(f"[megatiny] resumed from {root / tag}: step {step}, "
                              f"{consumed} samples consumed")
        accumulation = self.engine.gradient_accumulation_steps
        train_ds, valid_ds = self._build_data(accumulation)
        from megatiny.data import describe_datasets
        self.data_description = describe_datasets((train_ds, valid_ds, None))
        if resume is not None and resume[2]["extra"].get("data", {}).get("train") not in (
                None, self.data_description["train"]):
            self.logger.print("[megatiny] WARNING: the training data (blend, files, seq_length, seed or "
                              "sample count, e.g. a changed schedule.train_steps) differs from the "
                              f"checkpoint's; the data position ({consumed} samples) now indexes a "
                              "different sample order")
        from megatiny.data.sampler import PretrainingSampler
        sampler = PretrainingSampler(total_samples=len(train_ds), consumed_samples=consumed,
                                     micro_batch_size=run.batch.micro_batch_size, data_parallel_rank=rank,
                                     data_parallel_size=self.world)
        self.logger.print(
            f"[megatiny] {self.model_config.num_parameters() / 1e6:.2f}M parameters | {self.world} ranks | "
            f"ZeRO-{ds_engine.zero_stage(ds_config)} | precision {self.precision.describe()}\n"
            f"[megatiny] global batch {run.batch.global_batch_size} = "
            f"{run.batch.micro_batch_size} micro x {accumulation} accumulation x {self.world} ranks | "
            f"seq {run.batch.seq_length} | {run.schedule.train_steps} steps")
        return self._loop(step, consumed, iter(sampler), train_ds, valid_ds)

    def _loop(self, step: int, consumed: int, batches, train_ds, valid_ds) -> TrainResult:
        run, rank = self.run, self.rank
        total = run.schedule.train_steps
        accumulation = self.engine.gradient_accumulation_steps
        tokens_per_step = run.batch.global_batch_size * run.batch.seq_length
        flops_per_token = self.model_config.flops_per_token(run.batch.seq_length)
        peak = peak_tflops_for(ds_engine.device_name(self.dist.device), run.logging.peak_tflops)
        result = TrainResult(step=step, consumed_samples=consumed)
        interval_time, interval_steps, step_times = 0.0, 0, deque(maxlen=50)
        last_saved = step if step > 0 else None
        nan_step = int(os.environ.get(NAN_AT_STEP_ENV, -1))
        sigterm_step = int(os.environ.get(SIGTERM_AT_STEP_ENV, -1))
        self.engine.train()
        while step < total:
            started = time.perf_counter()
            lr = learning_rate(step, run.optimizer, run.schedule)
            self.engine.set_lr(lr)
            loss_sum, finite_micro = 0.0, 0
            for micro in range(accumulation):
                indices = next(batches)
                input_ids, labels = self._batch(train_ds, indices)
                loss = self.engine.loss(input_ids, labels)
                local = loss.detach().float().item()
                if step == nan_step:
                    local = float("nan")
                total_loss = ds_engine.all_reduce_sum([local], self.dist.device)[0]
                if math.isfinite(total_loss):
                    self.engine.backward(loss)
                    loss_sum += total_loss / self.world
                    finite_micro += 1
                else:
                    self._report_nonfinite(step, micro, indices, local)
                    if finite_micro == 0 and micro == accumulation - 1:
                        self.engine.set_lr(0.0)  # nothing finite this step: update with LR 0
                self.engine.step()
            consumed += run.batch.global_batch_size
            step += 1
            if finite_micro == 0:
                self.skipped_steps += 1
            elapsed = time.perf_counter() - started
            interval_time += elapsed
            interval_steps += 1
            step_times.append(elapsed)
            mean_loss = loss_sum / finite_micro if finite_micro else float("nan")
            grad_norm = self.engine.grad_norm() if finite_micro else None
            result.losses.append(mean_loss)
            self.logger.record(step, {"loss": mean_loss, "lr": lr, "grad_norm": grad_norm,
                                      "consumed_samples": consumed, "skipped_steps": self.skipped_steps,
                                      "step_time_s": elapsed})
            if step % run.logging.log_interval == 0 or step == total:
                self._log_interval(step, total, mean_loss, lr, grad_norm, consumed,
                                   throughput(tokens_per_step * interval_steps, interval_time,
                                              flops_per_token, self.world, peak), step_times)
                interval_time, interval_steps = 0.0, 0
            if step == sigterm_step and rank == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            if run.logging.eval_interval and (step % run.logging.eval_interval == 0 or step == total):
                self._evaluate(step, valid_ds)
            # Any rank signalled -> all ranks stop together after this step.
            if ds_engine.all_reduce_sum([float(self.stop.signum is not None)], self.dist.device)[0] > 0:
                self.logger.print(f"[megatiny] stop signal received: saving a checkpoint at step {step} and "
                                  "exiting")
                if run.checkpoint.save_dir:
                    self._save(step, consumed)
                result.stopped_by_signal = True
                break
            if run.checkpoint.save_interval and step % run.checkpoint.save_interval == 0:
                self._save(step, consumed)
                last_saved = step
        else:
            if run.checkpoint.save_dir and run.checkpoint.save_at_end and last_saved != step:
                self._save(step, consumed)
        result.step, result.consumed_samples, result.skipped_steps = step, consumed, self.skipped_steps
        self.logger.close()
        ds_engine.barrier()
        return result

    # ---------------------------------------------------------------- reporting
    def _report_nonfinite(self, step: int, micro: int, indices: list[int], local: float) -> None:
        where = f"step {step + 1}, micro-batch {micro}, rank {self.rank}, sample indices {indices}"
        if not math.isfinite(local):
            print(f"[megatiny] non-finite loss {local} at {where}", flush=True)
        if self.run.nan_policy == "stop":
            raise NonFiniteLoss(f"non-finite loss at step {step + 1} (micro-batch {micro}); nan_policy=stop. "
                                "Resume from the last checkpoint, e.g. with a lower optimizer.lr, or set "
                                "nan_policy=skip")
        self.logger.print(f"[megatiny] step {step + 1}: skipping micro-batch {micro} "
                          "(non-finite loss on some rank)")

    def _log_interval(self, step, total, loss, lr, grad_norm, consumed, perf, step_times) -> None:
        eta = (total - step) * (sum(step_times) / len(step_times))  # mean of the last 50 steps
        metrics = {"loss": loss, "lr": lr, "grad_norm": grad_norm, "consumed_samples": consumed,
                   "skipped_steps": self.skipped_steps, "memory_gb": memory_gb(self.dist.device), **perf}
        self.logger.print(console_line(step, total, metrics, eta))
        self.logger.scalars(step, {
            "train/loss": loss if math.isfinite(loss) else None, "train/lr": lr, "train/grad_norm": grad_norm,
            "train/consumed_samples": consumed, "train/skipped_steps": self.skipped_steps,
            "perf/tokens_per_s": perf["tokens_per_s"],
            "perf/tokens_per_s_per_device": perf["tokens_per_s_per_device"],
            "perf/tflops_per_device": perf["tflops_per_device"], "perf/mfu": perf.get("mfu"),
            "perf/memory_gb": metrics["memory_gb"]})

    @torch.no_grad()
    def _evaluate(self, step: int, valid_ds) -> float | None:
        """Mean validation loss over eval_iters micro-batches per rank (the same samples each time)."""
        if valid_ds is None or len(valid_ds) == 0:
            return None
        mbs, iters = self.run.batch.micro_batch_size, self.run.logging.eval_iters
        self.engine.train(False)
        total = 0.0
        for it in range(iters):
            start = (it * self.world + self.rank) * mbs
            indices = list(range(start, start + mbs))  # the valid split was sized for exactly these
            input_ids, labels = self._batch(valid_ds, indices)
            total += self.engine.loss(input_ids, labels).float().item()
        self.engine.train(True)
        loss = ds_engine.all_reduce_sum([total], self.dist.device)[0] / (iters * self.world)
        ppl = math.exp(min(loss, 50.0))
        self.logger.print(f"[megatiny] validation at step {step}: loss {loss:.4f} | perplexity {ppl:.2f}")
        self.logger.scalars(step, {"valid/loss": loss, "valid/perplexity": ppl})
        self.logger.record(step, {"valid_loss": loss, "valid_perplexity": ppl})
        return loss

    # ---------------------------------------------------------------- checkpoints
    def _save(self, step: int, consumed: int) -> None:
        """Save SAVE_DIR/step_N on every rank; mark it complete (megatiny.json, then `latest`) only
        after all ranks are done; then rotate old checkpoints."""
        run, rank = self.run, self.rank
        save_dir = Path(run.checkpoint.save_dir)
        tag = ckpt_io.tag_for_step(step)
        started = time.perf_counter()
        if rank == 0:
            save_dir.mkdir(parents=True, exist_ok=True)
            ckpt_io.prepare_tag_dir(save_dir, tag)
        ds_engine.barrier()
        client_state = {"megatiny": {"step": step, "consumed_samples": consumed, "world_size": self.world}}
        self.engine.save(save_dir, tag, client_state)
        ckpt_io.save_rng_state(save_dir / tag, rank)
        if rank == 1 and int(os.environ.get(KILL_AT_SAVE_ENV, -1)) == step:
            os.kill(os.getpid(), signal.SIGKILL)
        ds_engine.barrier()
        if rank == 0:
            write_metadata(save_dir / tag, self.model_config, tokenizer=run.tokenizer, step=step,
                           consumed_samples=consumed, extra={
                               "run_config": run.to_dict(), "data_blend": run.data.get("data_path"),
                               "data": self.data_description,
                               "world_size": self.world, "zero_stage": ds_engine.zero_stage(self.ds_config),
                               "precision": self.precision.name,
                               "skipped_steps": self.skipped_steps})
            ckpt_io.write_latest(save_dir, tag)
            deleted = ckpt_io.rotate(save_dir, run.checkpoint.keep_last)
            note = f" (removed {', '.join(deleted)})" if deleted else ""
            seconds = time.perf_counter() - started
            self.logger.print(f"[megatiny] saved {save_dir / tag} in {seconds:.1f}s{note}")
        ds_engine.barrier()
