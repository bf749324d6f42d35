"""Sharding full (HF-named) weights into tensor-parallel ranks (and concatenating the shards back,
as `megatiny.checkpoint.model_parallel` does); the checks that refuse models that cannot be split."""
import pytest
import torch

from megatiny.checkpoint.partition import partition_dim, shard_state_dict
from megatiny.model import GPT, get_preset
from megatiny.model.parallel_checks import check_context_parallel, check_tensor_parallel
from megatiny.parallel.context_parallel import split_for_context
from megatiny.parallel.state import ParallelLayout


@pytest.fixture(scope="module")
def full_state():
    torch.manual_seed(0)
    return GPT(get_preset("tiny-test", num_layers=2)).state_dict()


def test_every_matrix_is_split_and_every_vector_replicated(full_state):
    for name, tensor in full_state.items():
        assert (partition_dim(name) is None) == (tensor.dim() == 1), name


@pytest.mark.parametrize("tensor_size", [1, 2])
def test_shard_then_concatenate_is_the_identity(full_state, tensor_size):
    shards = [shard_state_dict(full_state, r, tensor_size) for r in range(tensor_size)]
    assert all(list(shard) == list(full_state) for shard in shards)
    for name, tensor in full_state.items():
        dim = partition_dim(name)
        parts = [shard[name] for shard in shards]
        if dim is None:  # replicated: every rank holds the full tensor
            assert all(torch.equal(part, tensor) for part in parts), name
        else:
            assert torch.equal(torch.cat(parts, dim=dim), tensor), name
    q = shards[-1]["model.layers.0.self_attn.q_proj.weight"]
    assert q.shape == (64 // tensor_size, 64)
    assert shards[-1]["model.layers.0.self_attn.o_proj.weight"].shape == (64, 64 // tensor_size)


def test_attention_biases_split_with_their_output_rows():
    """q/k/v biases: entry j belongs to output row j, so rank r holds the entries of its heads and kv
    groups; o_proj's bias is whole on every rank (added once, after the reduce)."""
    torch.manual_seed(0)
    full = GPT(get_preset("tiny-test", num_layers=1, qkv_bias=True, output_bias=True)).state_dict()
    prefix = "model.layers.0.self_attn."
    for p in "qkvo":  # entry j = j, so where each entry went shows
        full[prefix + f"{p}_proj.bias"] = torch.arange(float(full[prefix + f"{p}_proj.weight"].shape[0]))
    shards = [shard_state_dict(full, r, 2) for r in range(2)]
    for p in "qkv":
        rows = full[prefix + f"{p}_proj.weight"].shape[0] // 2
        for r, shard in enumerate(shards):
            assert shard[prefix + f"{p}_proj.weight"].shape[0] == rows
            want = torch.arange(r * rows, (r + 1) * rows).float()
            assert torch.equal(shard[prefix + f"{p}_proj.bias"], want)
    assert all(torch.equal(shard[prefix + "o_proj.bias"], full[prefix + "o_proj.bias"]) for shard in shards)


def test_shards_hold_whole_query_groups(full_state):
    """tiny-test: 8 heads of 8 dims, 2 kv groups. TP2 rank 1 gets query heads 4..7, which all
    use kv group 1 (head i uses group i // 4), and kv group 1 itself."""
    head_dim = 8
    rank1 = shard_state_dict(full_state, 1, 2)
    q_full = full_state["model.layers.1.self_attn.q_proj.weight"]
    k_full = full_state["model.layers.1.self_attn.k_proj.weight"]
    assert torch.equal(rank1["model.layers.1.self_attn.q_proj.weight"], q_full[4 * head_dim:])
    assert torch.equal(rank1["model.layers.1.self_attn.k_proj.weight"], k_full[1 * head_dim:])


def test_tensor_size_must_divide_the_query_groups():
    config = get_preset("tiny-test")  # 2 query groups
    check_tensor_parallel(config, ParallelLayout(tensor=2))
    with pytest.raises(ValueError,
                       match=r"parallel.tensor \(4\) must divide ModelConfig.num_query_groups \(2\)"):
        check_tensor_parallel(config, ParallelLayout(tensor=4))
    with pytest.raises(ValueError, match=r"ModelConfig.vocab_size \(511\)"):
        check_tensor_parallel(config.replace(vocab_size=511), ParallelLayout(tensor=2))


def test_kv_groups_must_cover_the_context_size():
    config = get_preset("tiny-test")  # 2 query groups
    check_context_parallel(config, ParallelLayout(context=2))
    with pytest.raises(ValueError, match=r"parallel.context \(2\) must divide .*\.num_query_groups \(2\) / "
                                         r"parallel.tensor \(2\) = 1"):
        check_context_parallel(config, ParallelLayout(tensor=2, context=2))


def test_split_for_context_takes_contiguous_slices_of_shifted_labels():
    tokens = torch.arange(9)[None]
    inputs, labels = tokens[:, :-1], tokens[:, 1:]
    assert split_for_context(inputs, 1, 2).tolist() == [[4, 5, 6, 7]]
    assert split_for_context(labels, 0, 2).tolist() == [[1, 2, 3, 4]]  # 4 is the next slice's first
    with pytest.raises(ValueError, match=r"divisible by parallel.context \(3\)"):
        split_for_context(inputs, 0, 3)
