"""The document options in the run config: Megatron's flag spellings, the EOD id resolved from
the datasets' sidecars (or refused naming `data.eod_token_id`), accepted on every layout."""
import pytest

import megatiny.cli.train as train_cli
from megatiny.cli.train import main as train_main
from megatiny.data.document_mask import DocumentMasking
from megatiny.data.sidecar import DatasetSidecar
from megatiny.training.config import RunConfig, load_config
from tests.helpers import REPO_ROOT

ZERO1 = {"zero_optimization": {"stage": 1}}
OPTIONS = {"reset_attention_mask": True, "reset_position_ids": True, "eod_mask_loss": True}


def run_config(prefix: str, **data) -> RunConfig:
    return RunConfig.from_dict({
        "model": {"preset": "tiny-test", "num_layers": 2}, "data": {"data_path": prefix, **data},
        "batch": {"seq_length": 16, "micro_batch_size": 1, "global_batch_size": 2},
        "distributed": {"deepspeed_config": str(REPO_ROOT / "ds_configs" / "zero1.json")},
        "nan_policy": "stop"})


def sidecar(prefix, eos_id):
    DatasetSidecar(tokenizer={"path": "tok", "sha256": "0", "vocab_size": 512, "eos_id": eos_id},
                   dtype="uint16", max_token_id=500, num_documents=1, num_tokens=10, json_key="text",
                   prepend_bos=False, append_eod=True).write(prefix)


def test_eod_id_comes_from_the_sidecar_or_is_refused(tmp_path):
    prefix = str(tmp_path / "corpus")
    with pytest.raises(ValueError, match="data.eod_token_id"):
        run_config(prefix, **OPTIONS).validate(1)
    sidecar(prefix, 2)
    plan = run_config(prefix, **OPTIONS).validate(1)
    assert plan.document_masking == DocumentMasking(2, True, True, True)
    assert run_config(prefix, eod_mask_loss=True, eod_token_id=7).validate(1).document_masking \
        == DocumentMasking(7, eod_mask_loss=True)
    assert run_config(prefix).validate(1).document_masking is None


@pytest.mark.parametrize("option", list(OPTIONS))
def test_every_layout_accepts_the_document_options(tmp_path, option):
    run = RunConfig.from_dict({
        "model": {"preset": "tiny-test", "num_layers": 2},
        "data": {"data_path": str(tmp_path / "x"), option: True, "eod_token_id": 2},
        "batch": {"seq_length": 16, "micro_batch_size": 1, "global_batch_size": 2},
        "parallel": {"pipeline": 2, "tensor": 2, "sequence_parallel": True}, "nan_policy": "stop"})
    assert run.plan(run.parallel.layout(8), ZERO1).document_masking.eod_token_id == 2


def test_megatron_flag_spellings_set_the_data_options(tmp_path, capsys, monkeypatch):
    prefix = str(tmp_path / "corpus")
    sidecar(prefix, 2)
    overrides = [f"data.data_path={prefix}", "model.preset=tiny-test",
                 f"distributed.deepspeed_config={REPO_ROOT / 'ds_configs' / 'zero1.json'}"]
    code = train_main(["--dry-run", "--world-size", "1", "--reset-attention-mask", "--reset-position-ids",
                       "--eod-mask-loss", *overrides])
    assert code == 0, capsys.readouterr()
    seen = []
    monkeypatch.setattr(train_cli, "dry_run", lambda run, world: seen.append(run.data) or 0)
    train_main(["--dry-run", "--reset-position-ids", *overrides])
    train_main(["--dry-run", "--reset-attention-mask", "--eod-mask-loss", *overrides])
    assert [(d.reset_attention_mask, d.reset_position_ids, d.eod_mask_loss) for d in seen] \
        == [(False, True, False), (True, False, True)]
    run = load_config(None, ["data.reset_attention_mask=true", *overrides])
    assert run.data.reset_attention_mask and not run.data.eod_mask_loss
