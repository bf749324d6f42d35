"""Dataset loaders for the test-only lm-eval tasks in this directory (named by their YAMLs)."""
from pathlib import Path

from megatiny.eval.tasks.local_data import jsonl_splits

HERE = Path(__file__).resolve().parent


def load_gen(**_metadata):
    return jsonl_splits(test=HERE / "megatiny_test_gen.jsonl")


def load_rolling(**_metadata):
    return jsonl_splits(test=HERE / "megatiny_test_rolling.jsonl")
