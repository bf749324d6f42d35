"""PretrainingSampler: exact resume from an integer, disjoint data-parallel shards."""
import pytest

from megatiny.data.sampler import PretrainingSampler


def flatten(batches):
    return [i for b in batches for i in b]


def global_stream(total, consumed, mbs, dp):
    """Sample ids in the order the whole job consumes them: global batch by global batch."""
    per_rank = [list(PretrainingSampler(total, consumed, mbs, r, dp)) for r in range(dp)]
    return [i for step in zip(*per_rank) for batch in step for i in batch]


@pytest.mark.parametrize("k", [0, 4, 12, 48, 96])
def test_resume_equals_uninterrupted(k):
    total, mbs, dp = 103, 2, 2
    full = global_stream(total, 0, mbs, dp)
    assert full == list(range(100))                      # global order; 3 leftover samples dropped
    assert global_stream(total, k, mbs, dp) == full[k:]
    for rank in range(dp):                               # each rank's own stream resumes exactly
        uninterrupted = list(PretrainingSampler(total, 0, mbs, rank, dp))
        resumed = list(PretrainingSampler(total, k, mbs, rank, dp))
        assert resumed == uninterrupted[k // (mbs * dp):]


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
