"""PREFIX.json sidecars: the vocabulary check before training, the per-sample check without one."""
import json
import shutil
import sys

import pytest
import yaml

from megatiny.data.builder import build_gpt_datasets
from megatiny.data.config import DataConfig
from megatiny.data.preprocess import preprocess
from megatiny.data.sidecar import DatasetSidecar, VocabMismatchError, check_data_vocab, merge_sidecars
from megatiny.data.tokenizer import train_sentencepiece
from tests.data.corpus import make_texts
from tests.helpers import REPO_ROOT, run_command, timeout_s


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    d = tmp_path_factory.mktemp("side")
    model = train_sentencepiece(make_texts(1500, seed=0), d / "spm", 500)
    (d / "in.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in make_texts(400, seed=1)))
    preprocess([str(d / "in.jsonl")], d / "c", model, prepend_bos=True, append_eod=True)
    prefix = str(d / "c_text_document")
    return d, prefix, model, DatasetSidecar.read(prefix)


def test_vocab_check_names_dataset_and_both_numbers(dataset):
    d, prefix, _, meta = dataset
    assert meta.max_token_id > 100
    config = DataConfig(data_path=f"0.5 {prefix} 0.5 {prefix}")
    assert check_data_vocab(config, meta.max_token_id + 1) == []
    with pytest.raises(VocabMismatchError, match=rf"{prefix}: holds token ids up to {meta.max_token_id} .*"
                                                 rf"vocab_size 500\) but the model's vocab_size is 100"):
        check_data_vocab(config, 100)


def test_without_sidecar_a_sample_with_a_too_large_id_fails_naming_the_dataset(dataset, tmp_path):
    d, prefix, _, meta = dataset
    for ext in ("bin", "idx"):          # the same data as Megatron would leave it: no PREFIX.json
        shutil.copy(f"{prefix}.{ext}", tmp_path / f"m.{ext}")
    config = DataConfig(data_path=str(tmp_path / "m"))
    assert check_data_vocab(config, 100) == [str(tmp_path / "m")]
    train, _, _ = build_gpt_datasets(config, 64, (20, 0, 0), seed=0, vocab_size=100)
    with pytest.raises(ValueError, match=rf"{tmp_path / 'm'}: sample 0 of the train split holds token id "
                                         rf"\d+ but the model's vocab_size is 100"):
        train[0]
    ok, _, _ = build_gpt_datasets(config, 64, (20, 0, 0), seed=0, vocab_size=meta.max_token_id + 1)
    assert all(int(ok[i].max()) <= meta.max_token_id for i in range(20))


def test_merging_needs_one_tokenizer(dataset):
    _, prefix, _, meta = dataset
    other = DatasetSidecar(**{**meta.__dict__, "tokenizer": {**meta.tokenizer, "sha256": "0" * 64}})
    with pytest.raises(ValueError, match="cannot be merged"):
        merge_sidecars([meta, other], ["a", "b"])
    both = merge_sidecars([meta, meta], ["a", "a"])
    assert both.num_tokens == 2 * meta.num_tokens and both.sources == meta.sources * 2


def test_training_refuses_the_data_before_any_engine_starts(dataset, tmp_path):
    d, prefix, model, meta = dataset
    ds_file = "ds_configs/zero1.json"
    config = {"model": {"preset": "tiny-test", "vocab_size": 128}, "tokenizer": str(model),
              "data": {"data_path": prefix, "split": "95,5,0"},
              "batch": {"seq_length": 32, "micro_batch_size": 2, "global_batch_size": 2},
              "schedule": {"train_steps": 2, "warmup_steps": 1},
              "checkpoint": {"save_dir": str(tmp_path / "run"), "save_interval": 2},
              "distributed": {"deepspeed_config": ds_file, "timeout_s": 60}}
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(config))
    r = run_command([sys.executable, "tools/train.py", "--config", str(tmp_path / "run.yaml")],
                    timeout=timeout_s(), env={"PYTHONPATH": str(REPO_ROOT)})
    assert r.returncode == 2, r.stdout
    assert f"error: {prefix}: holds token ids up to {meta.max_token_id}" in r.stdout
    assert "model's vocab_size is 128" in r.stdout
    assert "DeepSpeed info" not in r.stdout and "ZeRO" not in r.stdout    # no engine was created
    assert not (tmp_path / "run").exists() or not any((tmp_path / "run").rglob("*.pt"))
