"""Shared, expensive fixtures for tests/checkpoint: real DeepSpeed runs (each once per test run,
shared by the suite's xdist workers) and a real tokenizer."""
import random
from pathlib import Path

import pytest

from megatiny.data.tokenizer import train_sentencepiece
from tests.helpers import built_once, launch_ranks, run_command, timeout_s

TRAIN_SCRIPT = "tests/checkpoint/ds_train_tiny.py"
STEPS = 3
WORDS = ("the quick brown fox jumps over lazy dog 123 4567 hello world café naïve Ünïcödé "
         "tab\tnew x\ny def return (x + 1) ßü").split(" ")


def launch(save_root: Path, num_ranks: int, runs: list[str]) -> None:
    """One `deepspeed` launch training every NAME:STAGE[:tie] in `runs` under save_root/NAME."""
    cmd = [*launch_ranks(num_ranks), TRAIN_SCRIPT, "--save-root", str(save_root), "--steps", str(STEPS)]
    for run in runs:
        cmd += ["--run", run]
    result = run_command(cmd, timeout=timeout_s(steps=STEPS * len(runs), seconds_per_step=5,
                                                extra_s=30 * len(runs)))
    assert result.returncode == 0, result.stdout[-5000:]


@pytest.fixture(scope="session")
def ds_two_ranks(tmp_path_factory) -> Path:
    """Checkpoint roots trained by 2 ranks: z3 (ZeRO-3) and z1 (ZeRO-1) in bf16, z3f and z1f the
    same in fp32 (the layout `precision: auto` gives on CPUs without native bf16)."""
    return built_once(tmp_path_factory, "ds_w2", lambda root: launch(root, 2, ["z3:3", "z1:1", "z3f:3:fp32",
                                                                              "z1f:1:fp32"]))


@pytest.fixture(scope="session")
def ds_one_rank(tmp_path_factory) -> Path:
    """The same ZeRO-3 run as ds_two_ranks/z3, by a single rank."""
    return built_once(tmp_path_factory, "ds_w1", lambda root: launch(root, 1, ["z3:3"]))


@pytest.fixture(scope="session")
def ds_three_ranks(tmp_path_factory) -> Path:
    """3 ranks, so parameters do not divide evenly and ZeRO pads: z3 (ZeRO-3) and z2t (ZeRO-2 with
    tied embeddings)."""
    return built_once(tmp_path_factory, "ds_w3", lambda root: launch(root, 3, ["z3:3", "z2t:2:tie"]))


@pytest.fixture(scope="session")
def ds_runs(ds_one_rank, ds_two_ranks, ds_three_ranks) -> dict[str, Path]:
    """Every checkpoint root by name: z3w1, z3w2, z1w2, z3fw2, z1fw2, z3w3, z2tw3."""
    return {"z3w1": ds_one_rank / "z3", "z3w2": ds_two_ranks / "z3", "z1w2": ds_two_ranks / "z1",
            "z3fw2": ds_two_ranks / "z3f", "z1fw2": ds_two_ranks / "z1f",
            "z3w3": ds_three_ranks / "z3", "z2tw3": ds_three_ranks / "z2t"}


def sample_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 30))) for _ in range(n)]


@pytest.fixture(scope="session")
def sp_models(tmp_path_factory) -> dict[str, Path]:
    """Llama-style sentencepiece models (vocab 400 <= tiny-test's 512) trained on generated text."""
    root = tmp_path_factory.mktemp("sp")
    texts = sample_texts(3000, seed=1)
    return {kind: train_sentencepiece(texts, root / kind, 400, model_type=kind)
            for kind in ("bpe", "unigram")}


def write_dangling_latest(root: Path, tag: str) -> None:
    """Corrupt a checkpoint root on purpose: `latest` names `tag`, which does not exist (as after
    an edit by hand). The only place tests write `latest` themselves; everything else goes
    through CheckpointManager / megatiny.checkpoint.io.write_latest."""
    assert not (root / tag).exists()
    (root / "latest").write_text(tag)
