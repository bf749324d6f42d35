"""Continued pretraining of Hugging Face models, end to end: `megatiny train` with
`checkpoint.init_from=HF_DIR` and no model section, then `export_hf` back to the family's class,
which transformers loads and which computes what megatiny's checkpoint computes.

- Qwen2 shape on 1 rank (ZeRO-3) and 2 ranks (ZeRO-2): the q/k/v biases are ordinary parameters.
- Llama 3.2 shape (llama3 RoPE scaling, explicit head size, tied) on 1 rank and under tensor
  parallelism (TP2, ZeRO-1): same losses; the TP checkpoint exports with its RoPE scaling."""
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


def _train(root: Path, tiny_data, hf_source: Path, ranks: int, zero: int, *overrides: str) -> Path:
    save_dir = root / "ckpt"
    root.mkdir(parents=True)
    config = write_run_config(
        root / "run.yaml", tiny_data, save_dir, model=None,
        runtime={"precision": "fp32"}, schedule={"train_steps": STEPS, "warmup_steps": 1},
        logging={"log_interval": 1, "eval_interval": 0},
        checkpoint={"save_dir": str(save_dir), "save_interval": 0, "init_from": str(hf_source)},
        distributed={"deepspeed_config": f"ds_configs/zero{zero}.json", "timeout_s": 120})
    cmd = [venv_bin("python"), TRAIN] if ranks == 1 else [*launch_ranks(ranks), TRAIN]
    result = run_command([*cmd, "--config", str(config), *overrides], timeout=RUN_TIMEOUT_S, env=ENV)
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


LLAMA32 = dict(model_type="llama", vocab_size=320, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, head_dim=32, max_position_embeddings=128,
               tie_word_embeddings=True, rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=[2, 3],
               rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0,
                                "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 16})


def test_train_a_llama32_dir_under_tensor_parallelism_and_export_back(tiny_data, tmp_path):
    torch.manual_seed(0)
    source = tmp_path / "hf"
    transformers.AutoModelForCausalLM.from_config(transformers.AutoConfig.for_model(**LLAMA32)).save_pretrained(
        source)
    one = _train(tmp_path / "one", tiny_data, source, 1, 1)
    tp2 = _train(tmp_path / "tp2", tiny_data, source, 2, 1, "parallel.tensor=2")
    assert _losses(tp2) == pytest.approx(_losses(one), abs=1e-5)
    for name, run in (("one", one), ("tp2", tp2)):
        export_hf(run, tmp_path / f"export-{name}", dtype="float32", include_tokenizer=False)
    config = json.loads((tmp_path / "export-tp2" / "config.json").read_text())
    original = json.loads((source / "config.json").read_text())
    for key in ("rope_parameters", "head_dim", "tie_word_embeddings", "eos_token_id", "architectures"):
        assert config[key] == original[key], key
    one_hf, tp2_hf = (transformers.AutoModelForCausalLM.from_pretrained(tmp_path / f"export-{n}",
                                                                        dtype=torch.float32)
                      for n in ("one", "tp2"))
    x = torch.randint(0, 320, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(tp2_hf(x).logits, one_hf(x).logits, rtol=0, atol=1e-4)
