"""Continued pretraining of each imported family model on every model-parallel layout equals the
one-rank run: Llama 3.2 (llama3 RoPE scaling, tied, explicit head_dim), SmolLM2, Qwen2.5 (q/k/v
biases) and Mistral (a window of 8 in sequences of 32), each a tiny random model built by
transformers from its family's config dict with the symmetry broken (non-zero biases, norms
1 + noise, q/k scaled up), trained from `checkpoint.init_from` by the trainer's engines under TP2,
TP2+SP, CP2 and PP2 (ZeRO-1; Qwen2.5 TP2 also ZeRO-3), and Llama's attention_bias (q/k/v/o)
under TP2+SP and PP2. Losses and gradient norms of 4 steps, step-2 checkpoints resumed on another
layout, and the Hugging Face export of step 4, against the one-rank run (one 1-rank and one
2-rank launch of families_training_worker.py)."""
import json

import pytest
import torch
import transformers

from megatiny.checkpoint.hf import config_from_hf
from tests.checkpoint.test_hf_families import FAMILIES, break_symmetry
from tests.checkpoint.test_hf_roundtrip import read_safetensors_dir
from tests.helpers import REPO_ROOT, launch_ranks, run_command, timeout_s
from tests.model.families_training_worker import CASES, CLIP, RESUMES, SAVE_AT, STEPS, run_name

pytestmark = pytest.mark.slow
TOLERANCE = 1e-5
# Exported weights: Adam divides each gradient entry by its own running RMS, so the fp32 rounding of
# entries near zero (which differs between layouts) moves their update by up to ~lr; after 4 steps
# the exports differ by <= 9e-5 of a tensor's largest entry, <= 3e-3 of the training update.
EXPORT_TOLERANCE, UPDATE_TOLERANCE = 1e-3, 2e-2
WORKER = "tests/model/families_training_worker.py"
BASE = {"llama3.2": "llama3.2", "smollm2": "smollm2", "qwen2.5": "qwen2.5", "mistral": "mistral",
        "llama-bias": "smollm2"}


def hf_config(family: str) -> dict:
    """The family's config dict of tests/checkpoint/test_hf_families.py, 2 layers (llama-bias:
    SmolLM2's, untied, with Llama's attention_bias: biases on q, k, v and o)."""
    values = {**FAMILIES[BASE[family]], "num_hidden_layers": 2}
    if family == "llama-bias":
        values.update(tie_word_embeddings=False, attention_bias=True)
    return values


def build_hf(family: str, directory) -> None:
    torch.manual_seed(0)
    config = transformers.AutoConfig.for_model(**hf_config(family))
    model = transformers.AutoModelForCausalLM.from_config(config)
    break_symmetry(model.float(), seed=1)
    model.save_pretrained(directory)


def launch(ranks: int, args: list[str], runs: int) -> None:
    result = run_command([*launch_ranks(ranks), WORKER, *args],
                         timeout=timeout_s(steps=runs * STEPS, seconds_per_step=2, extra_s=runs * 5),
                         env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-6000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(one-rank results, per-rank two-rank results, the two output directories, the HF dirs)."""
    root = tmp_path_factory.mktemp("families_training")
    hf_root, reference, parallel = root / "hf", root / "one", root / "two"
    for family in CASES:
        build_hf(family, hf_root / family)
    reference.mkdir()
    parallel.mkdir()
    launch(1, ["--hf-root", str(hf_root), "--out-dir", str(reference), "--reference"], len(CASES))
    launch(2, ["--hf-root", str(hf_root), "--out-dir", str(parallel), "--reference-dir", str(reference)],
           sum(map(len, CASES.values())) + len(RESUMES))
    one = json.loads((reference / "runs-rank0.json").read_text())
    two = [json.loads((parallel / f"runs-rank{r}.json").read_text()) for r in range(2)]
    return one, two, reference, parallel, hf_root


LAYOUT_RUNS = [f"{family}/{layout}" for family, layouts in CASES.items() for layout in layouts]
RESUMED_RUNS = [f"{family}/{run_name(layout, source)}" for family, source, layout in RESUMES]


def max_rel_diff(ours: list[float], reference: list[float]) -> float:
    assert len(ours) == len(reference)
    return max(abs(a - b) / abs(b) for a, b in zip(ours, reference))


def test_families_are_what_they_claim_and_the_reference_trains_with_clipping(runs):
    one = runs[0]
    configs = {family: config_from_hf(hf_config(family)) for family in CASES}
    assert configs["llama3.2"].rope_scaling.type == "llama3" and configs["llama3.2"].kv_channels == 32
    assert configs["qwen2.5"].qkv_bias
    assert configs["llama-bias"].qkv_bias and configs["llama-bias"].output_bias
    assert configs["mistral"].sliding_window == 8
    assert all(configs[f].tie_word_embeddings for f in ("llama3.2", "smollm2", "qwen2.5"))
    for family in CASES:
        run = one[f"{family}/one"]
        assert run["losses"][2] < run["losses"][0] and run["losses"][3] < run["losses"][1], (family, run)
        assert min(run["grad_norms"]) > CLIP, (family, run)  # clipping acts on every step


def _assert_like_one_rank(runs, case: str, first_step: int = 0) -> None:
    """Every rank's losses and grad norms of run `case` (from step `first_step` + 1 on) within
    TOLERANCE of its family's one-rank run."""
    one, two = runs[0], runs[1]
    want = one[f"{case.split('/')[0]}/one"]
    for rank, results in enumerate(two):
        run = results[case]
        for key in ("losses", "grad_norms"):
            difference = max_rel_diff(run[key], want[key][first_step:])
            print(f"{case} rank {rank} {key}: {difference:.1e}")
            assert difference < TOLERANCE, (case, rank, key, run, want)


@pytest.mark.parametrize("case", LAYOUT_RUNS)
def test_training_on_a_layout_equals_one_rank(runs, case):
    _assert_like_one_rank(runs, case)


@pytest.mark.parametrize("resume", RESUMED_RUNS)
def test_a_checkpoint_resumes_on_another_layout(runs, resume):
    """Steps 3 and 4 continued from another layout's step-2 checkpoint equal the one-rank run's."""
    _assert_like_one_rank(runs, resume, first_step=SAVE_AT[0])




@pytest.mark.parametrize("case", LAYOUT_RUNS + RESUMED_RUNS)
def test_export_equals_the_one_rank_runs_export(runs, case):
    """The same config.json (family class, every architectural key) and every tensor: within
    EXPORT_TOLERANCE of its largest entry and UPDATE_TOLERANCE of what the 4 steps changed."""
    reference, parallel, hf_root = runs[2:]
    family = case.split("/")[0]
    ours, theirs = parallel / case / "hf", reference / family / "one" / "hf"
    assert json.loads((ours / "config.json").read_text()) == json.loads((theirs / "config.json").read_text())
    mine, want, initial = (read_safetensors_dir(d) for d in (ours, theirs, hf_root / family))
    assert sorted(mine) == sorted(want) == sorted(initial)
    if family in ("qwen2.5", "llama-bias"):
        assert any(k.endswith("q_proj.bias") for k in mine)
    differences = {k: (mine[k] - want[k]).abs().max().item() for k in want}
    of_tensor = max((differences[k] / want[k].abs().max().item(), k) for k in want)
    of_update = max((differences[k] / (want[k] - initial[k]).abs().max().item(), k) for k in want)
    print(f"{case}: export differs by {of_tensor[0]:.1e} of the tensor ({of_tensor[1]}), "
          f"{of_update[0]:.1e} of the update ({of_update[1]})")
    assert of_tensor[0] < EXPORT_TOLERANCE, of_tensor
    assert of_update[0] < UPDATE_TOLERANCE, of_update
