"""The pretraining loop: data -> DeepSpeed engine -> logs and checkpoints, with exact resume.

One optimizer step = `gradient_accumulation_steps` micro-batches on every data-parallel rank
(`batch.global_batch_size` samples in all). With model parallelism (`parallel:` section) the
data-parallel ranks are the replicas (`ParallelLayout.data`): the tensor and context ranks of one
replica read the same samples, and every rank's loss is its replica's mean. The learning rate
is a pure function of the step, and the data position is `consumed_samples`, so a resumed run
continues exactly where it stopped.
Saving and resuming are `megatiny.checkpoint.manager.CheckpointManager`'s.

Non-finite loss (bf16 and fp32 have no loss scaler; fp16's skips overflowing steps itself):
every micro-batch loss is summed across ranks before its backward pass, so all ranks agree.
`nan_policy: stop` raises `NonFiniteLoss`; `skip` drops that micro-batch from the gradient on every
rank, and when no micro-batch of the step is finite the update is taken with learning rate 0
(parameters unchanged; Adam's moments decay one step).

Host syncs: the loop reads one collective per micro-batch, carrying [loss, stop requested]: the
NaN agreement and the stop flag (SIGTERM/SIGINT on any rank) travel together, so a step costs
`gradient_accumulation_steps` of them (one without accumulation), plus reading the gradient norm
DeepSpeed computed in its step (for the metrics). Fewer is not possible while a non-finite
micro-batch is dropped: whether to run its backward pass (under ZeRO itself collective) must be
agreed before it runs. Validation steps add one all-reduce.

Faults are injected through `TrainCallbacks` (tests pass a subclass to `train`); the loop itself
has no test switches.
"""
from __future__ import annotations

import dataclasses
import math
import random
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from megatiny.checkpoint.manager import CheckpointManager, ResumePoint
from megatiny.checkpoint.metadata import TrainState, WorldLayout
from megatiny.data import build_gpt_datasets, describe_datasets
from megatiny.data.document_mask import DocumentInputs, document_inputs
from megatiny.data.sampler import PretrainingSampler
from megatiny.heartbeat import Heartbeat
from megatiny.parallel import process_group
from megatiny.precision import warn_if_emulated
from megatiny.process_env import launch_world_size
from megatiny.training.config import RunConfig, RunPlan
from megatiny.training.engine import build_engine
from megatiny.training.flops import peak_tflops_for, throughput
from megatiny.training.logging import MetricsLogger, console_line, memory_gb
from megatiny.training.schedule import learning_rate
from megatiny.training.spikes import SpikeDetector


class NonFiniteLoss(RuntimeError):
    """Raised with nan_policy=stop when a loss is NaN or infinite."""


@dataclass
class TrainResult:
    step: int
    consumed_samples: int
    stopped_by_signal: bool = False
    skipped_steps: int = 0
    losses: list[float] = field(default_factory=list)


class TrainCallbacks:
    """Points where a caller can act inside the loop; every method does nothing here. Steps are
    0-based in these calls (step s is logged as step s + 1). Tests subclass this to inject faults."""

    def step_started(self, step: int, rank: int) -> None:
        """Before the first micro-batch of `step`."""

    def micro_batch_loss(self, step: int, micro: int, rank: int, loss: torch.Tensor) -> torch.Tensor:
        """This rank's loss of a micro-batch (fp32 scalar, detached) as the ranks will compare it."""
        return loss

    def shards_written(self, step: int, rank: int) -> None:
        """While saving after `step` steps (1-based here: the checkpoint's step): this rank's files
        are written, the checkpoint is not yet marked complete."""


class _StopFlag:
    """SIGTERM/SIGINT, or a supervisor's request, set a flag; the loop agrees on it across ranks
    within each step's collectives."""

    def __init__(self) -> None:
        self.reason: str | None = None
        self._previous = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)

    @property
    def requested(self) -> bool:
        return self.reason is not None

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def _handle(self, signum, frame) -> None:
        self.request(signal.Signals(signum).name)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(run: RunConfig, callbacks: TrainCallbacks | None = None) -> TrainResult:
    """Run (or resume) training as configured. Every rank calls this; it returns on every rank.

    The run config is validated for the launcher's number of ranks before the process group
    starts (`RunConfig.validate`, what `megatiny train --dry-run` runs), so every rank refuses a
    bad config alike, with nothing started."""
    plan = run.validate(launch_world_size() or 1)
    dist_info = process_group.init_distributed(run.distributed.backend, run.distributed.timeout_s,
                                               run.distributed.master_port)
    if dist_info.world_size != plan.layout.world_size:  # a launcher that announced no world size
        plan = run.validate(dist_info.world_size)
    stop = _StopFlag()
    try:
        return _Trainer(run, plan, dist_info, stop, callbacks or TrainCallbacks()).execute()
    finally:
        stop.restore()
        process_group.shutdown()


class _Trainer:
    def __init__(self, run: RunConfig, plan: RunPlan, dist_info: process_group.DistInfo, stop: _StopFlag,
                 callbacks: TrainCallbacks):
        self.masking = plan.document_masking
        if self.masking is not None and run.data.eod_token_id is None:
            # record the EOD id read from the sidecars, so resume and evaluation cut the same way
            run = dataclasses.replace(run, data=dataclasses.replace(
                run.data, eod_token_id=self.masking.eod_token_id))
        self.run, self.plan, self.dist, self.stop, self.callbacks = run, plan, dist_info, stop, callbacks
        self.rank, self.world = dist_info.rank, dist_info.world_size
        self.model_config = run.model_config()
        # Sizes only (no process groups yet); data = the replicas that read different samples.
        self.layout = plan.layout
        self.data_rank = self.layout.coordinates(self.rank).data
        save_dir = run.checkpoint.save_dir
        log = run.logging
        tb_dir = log.tensorboard_dir or (str(Path(save_dir) / "tensorboard") if save_dir else None)
        metrics_file = log.metrics_file or (str(Path(save_dir) / "metrics.jsonl") if save_dir else None)
        self.logger = MetricsLogger(self.rank, tb_dir if log.tensorboard else None, metrics_file)
        self.checkpoints = CheckpointManager(save_dir, rank=self.rank, world_size=self.world,
                                             keep_last=run.checkpoint.keep_last, log=self.logger.print,
                                             parallel=self.layout, verify=run.checkpoint.verify)
        self.skipped_steps = 0
        # `megatiny supervise` watches these (None when not supervised).
        self.heartbeat = Heartbeat.from_env(
            self.rank, self.world, save_dir=save_dir, resume=run.checkpoint.resume,
            model_parallel=self.layout.tensor * self.layout.pipeline * self.layout.context,
            micro_batch_size=run.batch.micro_batch_size, global_batch_size=run.batch.global_batch_size,
            train_steps=run.schedule.train_steps)
        self._beat(0, "setup")
        spike = run.spike
        self.spikes = (SpikeDetector(spike.window, spike.loss_z, spike.grad_norm_z, spike.min_history)
                       if spike.policy != "none" else None)
        self.spike_skip: dict | None = None  # the current step's skip record, if it is skipped
        self.rewind_at: int | None = None  # spike.policy rewind: the 1-based step that spiked

    # ---------------------------------------------------------------- setup
    def _build_data(self):
        run = self.run
        train_samples = run.schedule.train_steps * run.batch.global_batch_size
        valid_samples = (run.logging.eval_iters * run.batch.micro_batch_size * self.layout.data
                         if run.logging.eval_interval else 0)
        build = lambda: build_gpt_datasets(run.data, run.batch.seq_length,  # noqa: E731
                                           (train_samples, valid_samples, 0), run.seed,
                                           vocab_size=self.model_config.vocab_size)
        # Rank 0 builds and caches the sample indices; the others then load them from the cache.
        if self.rank == 0:
            datasets = build()
        process_group.barrier()
        if self.rank != 0:
            datasets = build()
        return datasets[0], datasets[1]

    def _warn_if_data_changed(self, resume: ResumePoint | None, consumed: int) -> None:
        saved = (resume.state.data or {}).get("train") if resume is not None else None
        if saved is not None and saved != self.data_description["train"]:
            self.logger.print("[megatiny] WARNING: the training data (blend, files, seq_length, seed or "
                              "sample count, e.g. a changed schedule.train_steps) differs from the "
                              f"checkpoint's; the data position ({consumed} samples) now indexes a "
                              "different sample order")

    # ---------------------------------------------------------------- batches
    def _batch(self, dataset, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor, DocumentInputs]:
        """(input_ids, labels, their document inputs: all None unless the data's document options
        are on), [B, T] each."""
        samples = torch.from_numpy(np.stack([dataset[i] for i in indices]))  # int64 samples
        input_ids = samples[:, :-1]
        return input_ids, samples[:, 1:], document_inputs(input_ids, self.masking)

    # ---------------------------------------------------------------- main
    def execute(self) -> TrainResult:
        """Train; when that raises, the heartbeat (if supervised) says so before the error goes on."""
        try:
            return self._execute()
        except Exception as e:
            if self.heartbeat is not None:
                self.heartbeat.fail(e)
            raise

    def _execute(self) -> TrainResult:
        run = self.run
        seed_everything(run.seed)
        resume = self.checkpoints.find_resume(run.checkpoint.resume, self.model_config,
                                              zero_stage=self.plan.zero_stage)
        self.engine = build_engine(run, self.plan, self.dist.device, checkpoints=self.checkpoints,
                                   resume=resume)
        warn_if_emulated(self.engine.precision, self.logger.print)
        step, consumed = 0, 0
        if resume is not None:
            state = self.checkpoints.load(self.engine.deepspeed_engine, resume)
            step, consumed, self.skipped_steps = state.step, state.consumed_samples, state.skipped_steps
            if self.spikes is not None:
                self.spikes.load_state_dict(state.spike)
        accumulation = self.plan.gradient_accumulation_steps
        train_ds, valid_ds = self._build_data()
        self.data_description = describe_datasets((train_ds, valid_ds, None))
        self._warn_if_data_changed(resume, consumed)
        self.logger.print(
            f"[megatiny] {self.model_config.num_parameters() / 1e6:.2f}M parameters | {self.world} ranks | "
            f"ZeRO-{self.plan.zero_stage} | precision {self.engine.precision.describe()}\n"
            f"[megatiny] global batch {run.batch.global_batch_size} = "
            f"{run.batch.micro_batch_size} micro x {accumulation} accumulation x {self.layout.data} "
            f"data-parallel ranks | {self.layout.describe()} | "
            f"seq {run.batch.seq_length} | {run.schedule.train_steps} steps")
        return self._loop(step, consumed, self._batches(len(train_ds), consumed), train_ds, valid_ds)

    def _batches(self, total_samples: int, consumed: int):
        """This rank's micro-batches' sample indices from data position `consumed` on."""
        return iter(PretrainingSampler(total_samples=total_samples, consumed_samples=consumed,
                                       micro_batch_size=self.run.batch.micro_batch_size,
                                       data_parallel_rank=self.data_rank,
                                       data_parallel_size=self.layout.data))

    def _micro_batch(self, step: int, micro: int, batches, train_ds) -> tuple[torch.Tensor, list[int],
                                                                                torch.Tensor, float, bool]:
        """Forward one micro-batch and agree on it: (loss, sample indices, this rank's loss as
        compared, sum of the ranks' losses, whether any rank has a stop request). One collective,
        one host sync."""
        indices = next(batches)
        input_ids, labels, document = self._batch(train_ds, indices)
        loss = self.engine.loss(input_ids, labels, document)
        local = self.callbacks.micro_batch_loss(step, micro, self.rank, loss.detach().float())
        stop_requested = local.new_full((), float(self.stop.requested))  # a fill, no copy
        total, stops = process_group.all_reduce_sum_tensor(torch.stack([local, stop_requested])).tolist()
        return loss, indices, local, total, stops > 0

    def _accumulate(self, step: int, accumulation: int, lr: float, batches, train_ds
                    ) -> tuple[float, int, bool]:
        """One optimizer step of `accumulation` micro-batches at learning rate `lr`: (sum of the
        finite micro-batches' mean losses, how many were finite, whether any rank has a stop
        request)."""
        loss_sum, finite_micro, stop_requested = 0.0, 0, False
        for micro in range(accumulation):
            loss, indices, local, total_loss, stop_now = self._micro_batch(step, micro, batches, train_ds)
            stop_requested = stop_requested or stop_now
            last = micro == accumulation - 1
            if math.isfinite(total_loss):
                loss_sum += total_loss / self.world
                finite_micro += 1
                spike = last and self._is_spike(step, loss_sum / finite_micro)
                self.engine.micro_step(loss, lr, update=not spike)  # a spike (spike.policy: skip): dropped
            else:
                self._report_nonfinite(step, micro, indices, local.item())
                spike = last and finite_micro > 0 and self._is_spike(step, loss_sum / finite_micro)
                none_finite = last and finite_micro == 0  # then LR 0: parameters unchanged
                self.engine.micro_step(None, 0.0 if none_finite else lr, update=not spike)
        return loss_sum, finite_micro, stop_requested

    def _skip_rewound(self, step: int, accumulation: int, lr: float, batches, train_ds
                      ) -> tuple[float, int, bool]:
        """A step inside a range skipped by a rewind: its batches are passed over unread, the
        engine is not called (no update; the learning rate schedule moves on with the step)."""
        for _ in range(accumulation):
            next(batches)
        batch = self.run.batch.global_batch_size
        self.spike_skip = {"step": step + 1, "samples": [step * batch, (step + 1) * batch], "z": None}
        return 0.0, 0, False

    def _rewind(self) -> tuple[int, int]:
        """spike.policy rewind, after step `self.rewind_at` spiked (its update dropped): record the
        `spike.rewind_steps` batches ending with it as skipped, load the newest checkpoint before
        them and return its (step, consumed samples). Every rank calls this."""
        spike_step, self.rewind_at = self.rewind_at, None
        batch = self.run.batch.global_batch_size
        first = max(1, spike_step - self.run.spike.rewind_steps + 1)
        record = {"spike_step": spike_step, "steps": [first, spike_step],
                  "samples": [(first - 1) * batch, spike_step * batch]}
        rewound = [*self.spikes.rewound, record]
        point = self.checkpoints.rewind_point(first - 1)
        self.logger.print(f"[megatiny] step {spike_step}: loss spike, rewinding to {point.tag_dir}; steps "
                          f"{first}..{spike_step} (samples {record['samples'][0]}.."
                          f"{record['samples'][1] - 1}) will be skipped")
        self.logger.record(spike_step, {"spike_rewind": record})
        state = self.checkpoints.load(self.engine.deepspeed_engine, point)
        self.spikes.load_state_dict(state.spike)
        self.spikes.rewound = rewound  # the checkpoint predates this rewind (and maybe others)
        self.skipped_steps = state.skipped_steps
        return state.step, state.consumed_samples

    def _pipeline_step(self, step: int, accumulation: int, lr: float, batches, train_ds
                       ) -> tuple[float, int, bool]:
        """One optimizer step through DeepSpeed's pipeline engine (1F1B over `accumulation`
        micro-batches; every stage of a replica reads the same samples). The engine applies the
        update before the loss is known, so a non-finite loss stops the run (nan_policy: stop)."""
        micro_batches = [self._batch(train_ds, next(batches)) for _ in range(accumulation)]
        loss = self.engine.pipeline_step(micro_batches, lr)  # the global mean, on every stage
        stop_flag = loss.new_full((), float(self.stop.requested))
        total, stops = process_group.all_reduce_sum_tensor(torch.stack([loss.float(), stop_flag])).tolist()
        if not math.isfinite(total):
            self._report_nonfinite(step, 0, [], total)
        return total / self.world * accumulation, accumulation, stops > 0

    def _loop(self, step: int, consumed: int, batches, train_ds, valid_ds) -> TrainResult:
        run = self.run
        total = run.schedule.train_steps
        accumulation = self.plan.gradient_accumulation_steps
        tokens_per_step = run.batch.global_batch_size * run.batch.seq_length
        flops_per_token = self.model_config.flops_per_token(run.batch.seq_length)
        peak = peak_tflops_for(process_group.device_name(self.dist.device), run.logging.peak_tflops)
        result = TrainResult(step=step, consumed_samples=consumed)
        interval_time, interval_steps, step_times = 0.0, 0, deque(maxlen=50)
        last_saved = step if step > 0 else None
        while step < total:
            self._beat(step + 1, "step")
            if self.heartbeat is not None and self.heartbeat.stop_requested():
                self.stop.request("the supervisor's request")
            started = time.perf_counter()
            self.callbacks.step_started(step, self.rank)
            lr = learning_rate(step, run.optimizer, run.schedule)
            rewound = self.spikes is not None and self.spikes.rewound_range(step + 1) is not None
            take_step = self._skip_rewound if rewound else \
                self._pipeline_step if self.engine.pipelined else self._accumulate
            loss_sum, finite_micro, stop_requested = take_step(step, accumulation, lr, batches, train_ds)
            if self.rewind_at is not None:  # spike.policy rewind: back to a checkpoint before it
                step, consumed = self._rewind()
                batches = self._batches(len(train_ds), consumed)
                continue
            consumed += run.batch.global_batch_size
            step += 1
            if finite_micro == 0 and not rewound:
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
                                      "step_time_s": elapsed,
                                      **self._spike_metrics(step, mean_loss, grad_norm)})
            if step % run.logging.log_interval == 0 or step == total:
                self._log_interval(step, total, mean_loss, lr, grad_norm, consumed,
                                   throughput(tokens_per_step * interval_steps, interval_time,
                                              flops_per_token, self.world, peak), step_times)
                interval_time, interval_steps = 0.0, 0
            if run.logging.eval_interval and (step % run.logging.eval_interval == 0 or step == total):
                self._evaluate(step, valid_ds)
            if stop_requested:  # some rank was asked to stop during this step: all stop together
                self.logger.print(f"[megatiny] stop requested ({self.stop.reason or 'on another rank'}): "
                                  f"saving a checkpoint at step {step} and exiting")
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
        self._beat(step, "done")
        self.logger.close()
        process_group.barrier()
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

    def _evaluate(self, step: int, valid_ds) -> float | None:
        """Mean validation loss over eval_iters micro-batches per rank (the same samples each time)."""
        if valid_ds is None or len(valid_ds) == 0:
            return None
        mbs, iters = self.run.batch.micro_batch_size, self.run.logging.eval_iters
        # The tensor / context ranks of a replica read the same rows; the valid split was sized
        # for exactly these.
        starts = ((it * self.layout.data + self.data_rank) * mbs for it in range(iters))
        total = self.engine.evaluate(self._batch(valid_ds, list(range(start, start + mbs)))
                                     for start in starts)
        loss = process_group.all_reduce_sum([total], self.dist.device)[0] / (iters * self.world)
        ppl = math.exp(min(loss, 50.0))
        self.logger.print(f"[megatiny] validation at step {step}: loss {loss:.4f} | perplexity {ppl:.2f}")
        self.logger.scalars(step, {"valid/loss": loss, "valid/perplexity": ppl})
        self.logger.record(step, {"valid_loss": loss, "valid_perplexity": ppl})
        return loss

    def _is_spike(self, step: int, loss: float) -> bool:
        """spike.policy skip or rewind: whether step `step` (0-based)'s loss, the same number on
        every rank, is a spike; if so it is recorded with its global sample positions (skip) or
        marked for a rewind (`rewind_at`)."""
        self.spike_skip = None
        if self.spikes is None:
            return False
        verdict = self.spikes.judge_loss(loss)
        # The ranks judged the same all-reduced loss; one more all-reduce makes sure they agree
        # (a ZeRO step that some ranks drop and others take would hang or diverge).
        if process_group.all_reduce_sum([float(verdict.spike)], self.dist.device)[0] > 0:
            if self.run.spike.policy == "rewind":
                self.rewind_at = step + 1
                return True
            batch = self.run.batch.global_batch_size
            self.spike_skip = self.spikes.skip(step + 1, (step * batch, (step + 1) * batch), loss, verdict.z)
            z = "?" if verdict.z is None else f"{verdict.z:.1f}"
            self.logger.print(f"[megatiny] step {step + 1}: loss {loss:.4f} is a spike (z {z} > "
                              f"{self.spikes.loss_z}): update skipped on every rank, samples "
                              f"{step * batch}..{(step + 1) * batch - 1}")
            return True
        return False

    def _spike_metrics(self, step: int, loss: float, grad_norm: float | None) -> dict:
        """The step's spike fields for the metrics (none without a spike policy)."""
        if self.spikes is None:
            return {}
        skipped, self.spike_skip = self.spike_skip, None
        if skipped is not None:
            return {"spike_skipped": True, "spike_z": skipped["z"], "spike_samples": skipped["samples"]}
        z = self.spikes.record(step, loss, grad_norm)
        return {"spike_skipped": False, "grad_norm_z": z}

    def _beat(self, step: int, phase: str) -> None:
        if self.heartbeat is not None:
            self.heartbeat.beat(step, phase)

    # ---------------------------------------------------------------- checkpoints
    def _save(self, step: int, consumed: int) -> None:
        self._beat(step, "save")
        world = WorldLayout.of_run(self.layout, self.plan.zero_stage, self.engine.precision.name)
        state = TrainState(step=step, consumed_samples=consumed, skipped_steps=self.skipped_steps,
                           world=world, data=self.data_description, run_config=self.run.to_dict(),
                           spike=self.spikes.state_dict() if self.spikes is not None else None)
        self.checkpoints.save(self.engine.deepspeed_engine, self.model_config, state,
                              tokenizer=self.run.tokenizer,
                              after_shards=lambda: self.callbacks.shards_written(step, self.rank))
