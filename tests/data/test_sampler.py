"""PretrainingSampler: exact resume from an integer, disjoint data-parallel shards."""
import pytest

from megatiny.data.sampler import PretrainingSampler


def flatten(batches):
    return [i for b in batches for i in b]


@pytest.mark.parametrize("k", [0, 4, 12, 13, 48])
def test_resume_equals_uninterrupted(k):
    total, mbs, dp = 103, 2, 2
    for rank in range(dp):
        full = list(PretrainingSampler(total, 0, mbs, rank, dp))
        resumed = list(PretrainingSampler(total, k, mbs, rank, dp))
        # the uninterrupted stream, from the batch that starts at sample k
        expected = [b for b in full if b[0] - rank * mbs >= k] if k % (mbs * dp) == 0 else None
        if expected is not None:
            assert resumed == expected
        assert all(i >= k for i in flatten(resumed))


def test_ranks_partition_each_global_batch():
    total, mbs, dp = 64, 4, 4
    per_rank = [list(PretrainingSampler(total, 8, mbs, r, dp)) for r in range(dp)]
    assert all(len(p) == len(per_rank[0]) for p in per_rank)
    everything = sorted(
                        [i for p in per_rank for b in p for i in b])
    assert everything == list(range(8, 8 + 16 * 3))     # last incomplete global batch dropped
    assert len(PretrainingSampler(total, 8, mbs, 0, dp)) == 3


def test_rank_reads_only_its_micro_batches():
    s = list(PretrainingSampler(40, 0, 3, 1, 2))
    assert s[:2] == [[3, 4, 5], [9, 10, 11]]


def test_validation():
    with pytest.raises(ValueError, match="data_parallel_rank"):
        PretrainingSampler(10, 0, 1, 2, 2)
    with pytest.raises(ValueError, match="consumed_samples"):
        PretrainingSampler(10, 11, 1, 0, 1)
