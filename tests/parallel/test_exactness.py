"""Tensor, sequence, context and pipeline parallel runs equal the one-rank run (gloo, CPU, tiny GPT).

Model level: initial weights, logits, loss and every gradient of TP2, TP2+SP and CP2 against the
one-rank GPT built with the same seed. Engine level: 8 steps of real DeepSpeed engines (AdamW,
gradient clipping, activation checkpointing) under ZeRO-1, 2 and 3 (pipelines: DeepSpeed's
pipeline engine, ZeRO-1; ZeRO-2/3 refused); losses and DeepSpeed's gradient norms against the
one-rank engine of the same stage. bf16 (ZeRO-1): losses within 2% of fp32.
"""
import pytest

from tests.parallel.parallel_worker import CLIP, STEPS

TOLERANCE = 1e-5


def max_rel_diff(ours: list[float], reference: list[float]) -> float:
    assert len(ours) == len(reference) == STEPS
    return max(abs(a - b) / abs(b) for a, b in zip(ours, reference))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2", "tp2-tied", "tp2-sp", "tp2-sp-tied", "cp2"])
def test_parallel_model_equals_one_rank_model(model_checks, layout):
    for rank, results in enumerate(model_checks):
        diffs = results[layout]
        assert diffs["weights"] == 0.0, (rank, diffs)  # the shards of the same initial weights
        for key in ("logits", "loss", "grads"):
            assert diffs[key] < TOLERANCE, (rank, key, diffs)
        if layout.startswith("tp2") and "sp" not in layout:  # greedy decoding with the KV cache
            assert diffs["same_generation"] is True, (rank, diffs)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2-sp", "cp2"])
def test_parallel_model_with_packed_documents_equals_one_rank_model(model_checks, layout):
    """Document options on (per-sample positions, block-diagonal attention, EOD loss mask): CP2
    ranks hold their slice of positions and loss mask and the whole sequences' document ids."""
    for rank, results in enumerate(model_checks):
        diffs = results[f"{layout}-documents"]
        assert diffs["weights"] == 0.0, (rank, diffs)
        for key in ("logits", "loss", "grads"):
            assert diffs[key] < TOLERANCE, (rank, key, diffs)


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2-cp2", "tp2-sp-cp2"])
def test_tensor_and_context_parallel_together_equal_one_rank_model(four_rank_engines, layout):
    """Model level, 4 ranks, a tiny model with 4 kv groups (one per tensor x context rank)."""
    for rank, results in enumerate(four_rank_engines):
        diffs = results[f"model-{layout}"]
        assert diffs["weights"] == 0.0, (rank, diffs)
        for key in ("logits", "loss", "grads"):
            assert diffs[key] < TOLERANCE, (rank, key, diffs)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
def test_reference_run_trains_and_clips(reference_engines, stage):
    """The comparison means something: the loss falls and clipping is active on every step."""
    run = reference_engines[f"one-zero{stage}"]
    assert run["losses"][-1] < run["losses"][0] - 0.3, run
    assert min(run["grad_norms"]) > CLIP, run


def _check_runs(per_rank: list[dict], reference: dict, keys: list[str]) -> None:
    for key in keys:
        stage = key.rsplit("-", 1)[1]
        want = reference[f"one-{stage}"]
        for rank, results in enumerate(per_rank):
            run = results[key]
            assert max_rel_diff(run["losses"], want["losses"]) < TOLERANCE, (key, rank, run, want)
            assert max_rel_diff(run["grad_norms"], want["grad_norms"]) < TOLERANCE, (key, rank, run, want)


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("layout", ["tp2", "tp2-sp", "cp2"])
def test_two_rank_engines_equal_one_rank(reference_engines, two_rank_engines, layout, stage):
    _check_runs(two_rank_engines, reference_engines, [f"{layout}-zero{stage}"])


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 2, 3])
@pytest.mark.parametrize("layout", ["tp2", "cp2"])  # x DP2 on four ranks
def test_four_rank_engines_with_data_parallel_equal_one_rank(reference_engines, four_rank_engines,
                                                              layout, stage):
    _check_runs(four_rank_engines, reference_engines, [f"{layout}-zero{stage}"])


@pytest.mark.slow
@pytest.mark.parametrize("stage", [1, 3])
@pytest.mark.parametrize("layout", ["tp2-sp", "cp2"])
def test_engines_with_packed_documents_equal_one_rank(reference_engines, two_rank_engines, layout, stage):
    """8 steps with the document options on, against the one-rank run with them on (which is not
    the run without them: the options change the losses)."""
    want = reference_engines[f"one-documents-zero{stage}"]
    assert max_rel_diff(want["losses"], reference_engines[f"one-zero{stage}"]["losses"]) > 1e-2
    for rank, results in enumerate(two_rank_engines):
        run = results[f"{layout}-documents-zero{stage}"]
        assert max_rel_diff(run["losses"], want["losses"]) < TOLERANCE, (layout, rank, run, want)
        assert max_rel_diff(run["grad_norms"], want["grad_norms"]) < TOLERANCE, (layout, rank, run, want)


@pytest.mark.slow
def test_pipeline_engines_with_packed_documents_equal_one_rank_with_the_same_micro_batches(
        reference_engines, two_rank_engines, four_rank_engines):
    """The boundaries travel with the micro-batch through the stages. With eod_mask_loss a step's
    loss is the mean of its micro-batches' means (as in Megatron), so the reference is the one-rank
    engine accumulating the same PIPELINE_MICRO_BATCHES micro-batches, not the one-micro-batch run."""
    want = reference_engines["one-accum2-documents-zero1"]
    assert max_rel_diff(want["losses"], reference_engines["one-documents-zero1"]["losses"]) > 1e-5
    for results in two_rank_engines + four_rank_engines:
        key = "pp2-documents-zero1" if "pp2-documents-zero1" in results else "pp2-tp2-documents-zero1"
        run = results[key]
        assert max_rel_diff(run["losses"], want["losses"]) < TOLERANCE, (key, run, want)
        assert max_rel_diff(run["grad_norms"], want["grad_norms"]) < TOLERANCE, (key, run, want)


@pytest.mark.slow
def test_pipeline_engines_equal_one_rank_under_zero1(reference_engines, two_rank_engines,
                                                     four_rank_engines):
    _check_runs(two_rank_engines, reference_engines, ["pp2-zero1"])
    _check_runs(four_rank_engines, reference_engines, ["pp2-tp2-zero1"])


@pytest.mark.slow
def test_pipeline_with_zero2_or_3_is_refused_naming_both_settings(two_rank_engines, four_rank_engines):
    refusals = [results[key]["refused"] for results in two_rank_engines + four_rank_engines
                for key in ("pp2-zero2", "pp2-zero3", "pp2-tp2-zero2", "pp2-tp2-zero3") if key in results]
    assert len(refusals) == 2 * (2 + 4)
    for message in refusals:
        assert "parallel.pipeline = 2 needs ZeRO stage 0 or 1" in message, message
        assert "zero_optimization.stage <= 1" in message, message


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["tp2-sp", "cp2", "pp2"])
def test_bf16_runs_stay_within_2_percent_of_fp32(reference_engines, two_rank_engines, layout):
    fp32 = reference_engines["one-zero1"]["losses"]
    for results in two_rank_engines:
        bf16 = results[f"{layout}-zero1-bf16"]["losses"]
        assert all(abs(a - b) / b < 0.02 for a, b in zip(bf16, fp32)), (bf16, fp32)
