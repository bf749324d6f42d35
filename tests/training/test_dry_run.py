"""`megatiny train --dry-run`: the run config's validation on one process, with the refusals the
launched runs give (tests/training/test_parallel_runs.py, tests/parallel/test_exactness.py,
tests/parallel/test_pipeline.py, tests/parallel/test_tensor_parallel.py), in-process and fast."""
from __future__ import annotations

import json
import re

import pytest
import torch.distributed as dist

from megatiny.cli.train import main
from megatiny.parallel.state import ParallelLayout
from megatiny.training.config import load_config
from megatiny.training.memory import rank_memory
from tests.helpers import REPO_ROOT, free_port

DATA = "data.data_path=/nonexistent/corpus_text_document"  # no sidecar: nothing to read, nothing refused
ZERO = {stage: f"distributed.deepspeed_config={REPO_ROOT / 'ds_configs' / f'zero{stage}.json'}"
        for stage in (1, 2, 3)}


def _dry_run(capsys, *args: str) -> tuple[int, str, str]:
    status = main(["--dry-run", *args])
    out, err = capsys.readouterr()
    return status, out, err


@pytest.mark.parametrize("args, message", [
    # test_parallel_runs.py: pipeline with ZeRO-3 is refused naming both (2 ranks, launched)
    ((ZERO[3], "parallel.pipeline=2", "--world-size", "2"),
     r"parallel.pipeline = 2 needs ZeRO stage 0 or 1 .*zero_optimization.stage <= 1"),
    # test_exactness.py: pp2 and pp2 x tp2 under ZeRO-2/3 (2 and 4 ranks)
    ((ZERO[2], "parallel.pipeline=2", "--world-size", "2"),
     r"parallel.pipeline = 2 needs ZeRO stage 0 or 1 \(DeepSpeed's pipeline engine does not support stage 2"),
    ((ZERO[3], "parallel.pipeline=2", "parallel.tensor=2", "--world-size", "4"),
     r"parallel.pipeline = 2 needs ZeRO stage 0 or 1 .* stage 3\).*zero_optimization.stage <= 1"),
    # test_pipeline.py: what the pipeline model refuses
    ((ZERO[1], "parallel.pipeline=2", "parallel.context=2", "nan_policy=stop"),
     r"parallel.pipeline = 2 with parallel.context = 2 is not supported"),
    ((ZERO[1], "parallel.pipeline=8", "nan_policy=stop"), r"parallel.pipeline \(8\) exceeds .* = 4\)"),
    ((ZERO[1], "parallel.pipeline=2", "parallel.tensor=4", "nan_policy=stop"),
     r"parallel.tensor \(4\) must divide ModelConfig.num_query_groups \(2\)"),
    # the loop's refusal of a pipeline that would skip micro-batches
    ((ZERO[1], "parallel.pipeline=2"), r"parallel.pipeline > 1 needs nan_policy: stop"),
    # test_tensor_parallel.py / test_config.py: tensor and context sizes that do not divide
    (("parallel.tensor=4",), r"parallel.tensor \(4\) must divide ModelConfig.num_query_groups \(2\)"),
    (("parallel.tensor=2", "model.preset=tiny-test", "model.vocab_size=511"),
     r"parallel.tensor \(2\) must divide ModelConfig.vocab_size"),
    (("parallel.context=3",), r"parallel.context \(3\) must divide the key/value groups"),
    (("parallel.context=2", "parallel.tensor=2"),
     r"parallel.context \(2\) must divide .*num_query_groups \(2\) / parallel.tensor \(2\) = 1"),
    (("parallel.context=2", "batch.seq_length=63"),
     r"batch.seq_length \(63\) must be divisible by parallel.context"),
    (("parallel.sequence_parallel=true",), r"parallel.sequence_parallel .* needs parallel.tensor > 1"),
    # the layout and the batch over the ranks
    (("parallel.tensor=2", "--world-size", "3"), r"world size 3 is not divisible by parallel.tensor"),
    (("batch.global_batch_size=8", "batch.micro_batch_size=4", "--world-size", "3"),
     r"batch.global_batch_size \(8\) must be a multiple of batch.micro_batch_size x data-parallel size"),
])
def test_dry_run_refuses_what_a_launched_run_refuses(capsys, args, message):
    status, out, err = _dry_run(capsys, DATA, *args)
    assert status == 2, out
    assert err.startswith("error: ") and "Traceback" not in err
    assert re.search(message, err), err


def test_dry_run_refuses_a_deepspeed_file_that_sets_what_the_run_config_owns(capsys, tmp_path):
    ds_file = tmp_path / "my_ds.json"
    ds_file.write_text(json.dumps({"zero_optimization": {"stage": 1}, "train_batch_size": 16}))
    status, _, err = _dry_run(capsys, DATA, f"distributed.deepspeed_config={ds_file}")
    assert status == 2
    assert f"{ds_file}: sets 'train_batch_size'" in err and "batch.global_batch_size" in err
    status, _, err = _dry_run(capsys, DATA, f"distributed.deepspeed_config={tmp_path / 'none.json'}")
    assert status == 2 and "distributed.deepspeed_config:" in err and "not found" in err


def test_dry_run_without_data_says_what_to_set(capsys):
    status, _, err = _dry_run(capsys)
    assert status == 2 and "data: no training data; set data.data_path" in err


def test_the_launchers_world_size_wins_over_the_option(capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")
    status, _, err = _dry_run(capsys, DATA, "parallel.tensor=2", "--world-size", "4")
    assert status == 2 and "world size 3 is not divisible" in err


def test_train_refuses_before_any_process_group_starts(monkeypatch):
    """The real run's path, as rank 0 of 2 under a launcher: the same message, raised before
    init_distributed (which would wait for rank 1, up to distributed.timeout_s)."""
    from megatiny.training.loop import train

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    run = load_config(None, [DATA, ZERO[3], "parallel.pipeline=2", "distributed.timeout_s=10"])
    with pytest.raises(ValueError, match="parallel.pipeline = 2 needs ZeRO stage 0 or 1"):
        train(run)
    assert not dist.is_initialized()


def test_dry_run_prints_the_resolved_run(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    status, out, err = _dry_run(capsys, DATA, ZERO[1], "parallel.tensor=2", "parallel.sequence_parallel=true",
                                "batch.micro_batch_size=2", "batch.global_batch_size=16",
                                "batch.seq_length=64", "runtime.precision=fp32", "--world-size", "4")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == "dry run: the config is valid for 4 ranks (nothing was started)"
    assert "layout: tensor 2 x pipeline 1 x context 1 x data 2 = 4 ranks, sequence parallel" in lines
    assert any(line.startswith("precision: fp32 (") for line in lines)
    assert ("batch: micro-batch 2 x gradient accumulation 4 x data-parallel 2 = global batch 16 sequences "
            "of 64 tokens = 1024 tokens per step") in lines
    assert "memory per rank (estimate, ZeRO-1, fp32; activations not included):" in lines
    ds_config = json.loads(out[out.index("\n{") + 1:])
    assert ds_config["train_batch_size"] == 16 and ds_config["gradient_accumulation_steps"] == 4
    assert ds_config["zero_optimization"]["stage"] == 1 and "bf16" not in ds_config


def test_dry_run_defaults_to_one_replica_of_the_model_parallel_sizes(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    status, out, _ = _dry_run(capsys, DATA, "parallel.tensor=2")
    assert status == 0 and "layout: tensor 2 x pipeline 1 x context 1 x data 1 = 2 ranks" in out


def test_memory_estimate_follows_the_zero_stage():
    """12 bytes of fp32 optimizer state per parameter for bf16, partitioned by ZeRO over data x context."""
    run = load_config(None, ["model.preset=tinyllama-1.1b"])
    one = rank_memory(run.model_config(), ParallelLayout(), 0, "bf16")
    assert one.parameters == run.model_config().num_parameters()
    assert (one.param_bytes, one.grad_bytes, one.optimizer_bytes) == (2 * one.parameters, 2 * one.parameters,
                                                                      12 * one.parameters)
    tp2 = rank_memory(run.model_config(), ParallelLayout(tensor=2), 0, "bf16")
    assert one.parameters / 2 < tp2.parameters < one.parameters / 2 + 50_000  # norms are replicated
    zero3 = rank_memory(run.model_config(), ParallelLayout(data=4), 3, "bf16")
    assert zero3.total_bytes == pytest.approx(one.total_bytes / 4, abs=4)
    zero1 = rank_memory(run.model_config(), ParallelLayout(data=4), 1, "fp32")
    assert (zero1.param_bytes, zero1.optimizer_bytes) == (4 * one.parameters, 2 * one.parameters)
