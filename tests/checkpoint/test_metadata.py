"""megatiny.json: the typed TrainState round trip, migration of version-1 files, refusal of newer ones."""
import json

import pytest

from megatiny.checkpoint.metadata import METADATA_FILE, TrainState, WorldLayout, read_metadata, write_metadata
from megatiny.model.config import get_preset
from megatiny.training.config import RunConfig

CONFIG = get_preset("tiny-test")


def test_train_state_round_trip(tmp_path):
    state = TrainState(step=16, consumed_samples=128, skipped_steps=1,
                       world=WorldLayout(world_size=4, zero_stage=3, precision="bf16"),
                       data={"train": {"blend": "x"}}, run_config=RunConfig().to_dict())
    write_metadata(tmp_path, CONFIG, tokenizer="tok.model", state=state, notes={"why": "test"})
    meta = read_metadata(tmp_path)
    assert meta["train_state"] == state and meta["train_state"].world.data_parallel_size == 4
    assert (meta["step"], meta["consumed_samples"]) == (16, 128)
    assert meta["model"] == CONFIG and meta["tokenizer"] == "tok.model" and meta["notes"] == {"why": "test"}
    on_disk = json.loads((tmp_path / METADATA_FILE).read_text())
    assert on_disk["format_version"] == 2 and "extra" not in on_disk


def test_version_1_file_is_migrated(tmp_path):
    """The layout megatiny wrote before TrainState: `extra` dict, runtime choices in `model`."""
    run_config = RunConfig().to_dict()
    run_config["model"].update(attention_backend="sdpa", activation_checkpointing=1)
    del run_config["runtime"]["attention_backend"], run_config["runtime"]["activation_checkpointing"]
    old = {"format_version": 1, "tokenizer": None, "step": 8, "consumed_samples": 64,
           "model": {**CONFIG.to_dict(), "attention_backend": "sdpa", "activation_checkpointing": 1},
           "extra": {"run_config": run_config, "data_blend": "/d/a", "data": {"train": {"n": 1}},
                     "world_size": 2, "zero_stage": 3, "precision": "fp32", "skipped_steps": 2,
                     "converted_from": "/somewhere"}}
    (tmp_path / METADATA_FILE).write_text(json.dumps(old))
    meta = read_metadata(tmp_path)
    state = meta["train_state"]
    assert meta["model"] == CONFIG  # runtime choices dropped: the architecture is plain equality
    assert (state.step, state.consumed_samples, state.skipped_steps) == (8, 64, 2)
    assert state.world == WorldLayout(world_size=2, zero_stage=3, precision="fp32")
    assert state.data == {"train": {"n": 1}} and meta["notes"] == {"converted_from": "/somewhere"}
    run = RunConfig.from_dict(state.run_config)  # the stored run config still parses
    assert run.runtime.attention_backend == "sdpa" and run.runtime.activation_checkpointing == 1
    # a weights dir of version 1 (no world) has no world layout
    (tmp_path / METADATA_FILE).write_text(json.dumps({**old, "extra": {}}))
    assert read_metadata(tmp_path)["train_state"].world is None


def test_newer_or_unknown_version_is_refused(tmp_path):
    write_metadata(tmp_path, CONFIG)
    payload = json.loads((tmp_path / METADATA_FILE).read_text())
    for version, message in ((3, "written by a newer megatiny .format_version 3.*upgrade"),
                             (0, "format_version 0 is not one this megatiny reads"),
                             ("2", "format_version '2' is not one")):
        (tmp_path / METADATA_FILE).write_text(json.dumps({**payload, "format_version": version}))
        with pytest.raises(ValueError, match=message):
            read_metadata(tmp_path)


def test_bad_train_state_names_the_field(tmp_path):
    write_metadata(tmp_path, CONFIG)
    payload = json.loads((tmp_path / METADATA_FILE).read_text())
    payload["train_state"]["stepz"] = 1
    (tmp_path / METADATA_FILE).write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"megatiny.json: field 'train_state' is invalid: .*\['stepz'\]"):
        read_metadata(tmp_path)
    payload["train_state"] = {"step": 1, "world": {"world_size": 6, "tensor_parallel_size": 4}}
    (tmp_path / METADATA_FILE).write_text(json.dumps(payload))
    with pytest.raises(ValueError, match="not a multiple of tensor x pipeline x context"):
        read_metadata(tmp_path)
