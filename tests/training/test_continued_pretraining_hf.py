"""Continued pretraining of a Qwen2-shaped Hugging Face model, end to end: `megatiny train` with
`checkpoint.init_from=HF_DIR` and no model section (1 rank, ZeRO-3; 2 ranks, ZeRO-2: the q/k/v
biases are ordinary parameters to ZeRO), then `export_hf` back to a `Qwen2ForCausalLM` that
transformers loads and that computes what megatiny's checkpoint computes."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers

from megatiny.checkpoint import export_hf, load_model
from tests.checkpoint.test_hf_roundtrip import read_safetensors_dir
from tests.helpers import REPO_ROOT, launch_ranks, rank_env, run_command, timeout_s, venv_bin
from tests.training.conftest import write_run_config
from tests.training.test_init_from_hf import qwen2_dir

pytestmark = pytest.mark.slow

TRAIN = str(REPO_ROOT / "tools" / "train.py")
ENV = {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": str(REPO_ROOT), **rank_env()}
STEPS = 3
RUN_TIMEOUT_S = timeout_s(steps=STEPS, seconds_per_step=4, extra_s=60)


def _losses(save_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.fixture(scope="module")
def hf_source(tmp_path_factory):
    return qwen2_dir(tmp_path_factory.mktemp("qwen2_source") / "hf")


def _train(root: Path, tiny_data, hf_source: Path, ranks: int, zero: int) -> Path:
    save_dir = root / "ckpt"
    root.mkdir(parents=True)
    config = write_run_config(
        root / "run.yaml", tiny_data, save_dir, model=None,
        runtime={"precision": "fp32"}, schedule={"train_steps": STEPS, "warmup_steps": 1},
        logging={"log_interval": 1, "eval_interval": 0},
        checkpoint={"save_dir": str(save_dir), "save_interval": 0, "init_from": str(hf_source)},
        distributed={"deepspeed_config": f"ds_configs/zero{zero}.json", "timeout_s": 120})
    cmd = [venv_bin("python"), TRAIN] if ranks == 1 else [*launch_ranks(ranks), TRAIN]
    result = run_command([*cmd, "--config", str(config)], timeout=RUN_TIMEOUT_S, env=ENV)
    assert result.returncode == 0, result.stdout[-5000:]
    assert "initialised the weights from" in result.stdout
    return save_dir


def test_train_from_a_qwen2_dir_and_export_back_to_qwen2(hf_source, tiny_data, tmp_path):
    one = _train(tmp_path / "one", tiny_data, hf_source, ranks=1, zero=3)
    two = _train(tmp_path / "two", tiny_data, hf_source, ranks=2, zero=2)
    assert len(_losses(one)) == STEPS
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)  # same batches, same weights
    export_hf(one, tmp_path / "export", dtype="float32", include_tokenizer=False)
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForCausalLM"] and config["use_sliding_window"] is False
    exported = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "export", dtype=torch.float32)
    assert type(exported).__name__ == "Qwen2ForCausalLM"
    trained, initial = read_safetensors_dir(tmp_path / "export"), read_safetensors_dir(hf_source)
    assert trained.keys() == initial.keys()
    bias = "model.layers.0.self_attn.q_proj.bias"
    assert not torch.equal(trained[bias], initial[bias])  # the biases trained too
    model, _ = load_model(one, dtype=torch.float32)
    x = torch.randint(0, 320, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(exported(x).logits, model(x), rtol=0, atol=1e-5)
