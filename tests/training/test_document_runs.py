"""A real training run (one `python` process, ZeRO-1, validation) with Megatron's three document
options given as Megatron's flags: it trains, records the options and the EOD id in its
checkpoints, and resumes bit-exactly."""
from __future__ import annotations

import json
import shutil

import pytest
import yaml

from megatiny.checkpoint.io import write_latest
from megatiny.data.tokenizer import load_tokenizer
from tests.helpers import REPO_ROOT, run_command, timeout_s, venv_bin
from tests.training.conftest import write_run_config

pytestmark = pytest.mark.slow

TRAIN = str(REPO_ROOT / "tools" / "train.py")
ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO_ROOT)}
FLAGS = ["--reset-attention-mask", "--reset-position-ids", "--eod-mask-loss"]


def losses(save_dir) -> dict[int, float]:
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def test_run_with_document_options_records_them_and_resumes_bit_exactly(tiny_data, tmp_path):
    eod = load_tokenizer(tiny_data["tokenizer"]).eos_id
    save_dir = tmp_path / "ckpt"
    config = write_run_config(
        tmp_path / "run.yaml", tiny_data, save_dir,
        schedule={"train_steps": 4, "warmup_steps": 1}, checkpoint={"save_interval": 2},
        logging={"log_interval": 1, "eval_interval": 2, "eval_iters": 1},
        distributed={"deepspeed_config": "ds_configs/zero1.json", "timeout_s": 120})
    values = yaml.safe_load(config.read_text())
    values["data"]["eod_token_id"] = eod  # (this data has no sidecar to read it from)
    config.write_text(yaml.safe_dump(values))
    run = lambda: run_command([venv_bin("python"), TRAIN, "--config", str(config), *FLAGS],  # noqa: E731
                              timeout=timeout_s(launches=1, steps=4, seconds_per_step=4), env=ENV)
    first = run()
    assert first.returncode == 0, first.stdout[-4000:]
    assert "validation at step 4" in first.stdout
    saved = json.loads((save_dir / "step_00000004" / "megatiny.json").read_text())
    data = saved["train_state"]["run_config"]["data"]
    assert (data["reset_attention_mask"], data["reset_position_ids"], data["eod_mask_loss"],
            data["eod_token_id"]) == (True, True, True, eod)
    expected = losses(save_dir)
    shutil.rmtree(save_dir / "step_00000004")
    write_latest(save_dir, "step_00000002")
    second = run()
    assert second.returncode == 0 and "resumed from" in second.stdout, second.stdout[-4000:]
    resumed = losses(save_dir)
    assert [resumed[s] for s in (3, 4)] == [expected[s] for s in (3, 4)]
