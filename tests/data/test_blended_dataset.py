"""Greedy weighted blending: exact rule, proportions of every prefix, caching, many datasets."""
import numpy as np
import pytest

from megatiny.data.blended_dataset import BlendedDataset, _blend_loop, build_blending_indices


def reference(weights, size):
    """Megatron's build_blending_indices, literally."""
    w = np.asarray(weights, dtype=np.float64) / np.sum(weights)
    counts = np.zeros(len(w), np.int64)
    out_d, out_s = [], []
    for s in range(size):
        err = w * max(s, 1) - counts
        i = int(np.argmax(err))
        out_d.append(i)
        out_s.append(counts[i])
        counts[i] += 1
    return np.array(out_d), np.array(out_s)


@pytest.mark.parametrize("weights", [[0.7, 0.3], [0.3, 0.7], [0.5, 0.5], [1, 3], [0.123, 0.877],
                                     [0.2, 0.5, 0.3], [0.8, 0.1, 0.1], [1, 1, 1, 1, 5]])
def test_matches_megatron_rule(weights):
    d, s = build_blending_indices(weights, 3000)
    rd, rs = reference(weights, 3000)
    np.testing.assert_array_equal(d, rd)
    np.testing.assert_array_equal(s, rs)


def test_every_prefix_within_one_sample_of_target():
    n = 10_000
    d, s = build_blending_indices([0.7, 0.3], n)
    counts = np.stack([np.cumsum(d == 0), np.cumsum(d == 1)], axis=1)
    targets = np.arange(1, n + 1)[:, None] * np.array([0.7, 0.3])
    assert np.abs(counts - targets).max() <= 1.0
    assert counts[-1].tolist() == [7000, 3000]
    # sample indices of each dataset are 0, 1, 2, ... in order
    for i in (0, 1):
        np.testing.assert_array_equal(s[d == i], np.arange((d == i).sum()))


def test_two_dataset_fast_path_equals_loop():
    for w0 in np.linspace(0.01, 0.99, 37):
        w = [float(w0), float(1 - w0)]
        fast = build_blending_indices(w, 5000)
        slow = _blend_loop((np.array(w) / sum(w)).tolist(), 5000)
        np.testing.assert_array_equal(fast[0], slow[0])


def test_no_255_dataset_limit():
    d, _ = build_blending_indices([1.0] * 300, 900)
    assert d.dtype == np.int32
    assert np.bincount(d).tolist() == [3] * 300


class Numbers:
    def __init__(self, tag, n):
        self.tag, self.n = tag, n

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if not 0 <= i < self.n:
            raise IndexError(i)
        return np.array([self.tag, i])


def test_blended_dataset_reads_within_each_dataset(tmp_path):
    parts = [Numbers(0, 705), Numbers(1, 302)]
    ds = BlendedDataset(parts, [0.7, 0.3], 1000, tmp_path, index="megatron")
    rows = np.stack([ds[i] for i in range(len(ds))])
    assert (rows[:, 1][rows[:, 0] == 0] < 705).all()
    assert np.bincount(rows[:, 0]).tolist() == [700, 300]
    again = BlendedDataset(parts, [0.7, 0.3], 1000, tmp_path, index="megatron")
    assert isinstance(again.dataset_index, np.memmap)
    np.testing.assert_array_equal(again.dataset_index, ds.dataset_index)
    with pytest.raises(ValueError, match="only has 100"):
        BlendedDataset([Numbers(0, 100), Numbers(1, 302)], [0.7, 0.3], 1000, tmp_path / "x", index="megatron")
