"""The block sample index: permutations, each document once per epoch, packing, resume, blends."""
import hashlib

import numpy as np
import pytest

from megatiny.data import block_index
from megatiny.data.blended_dataset import BlendedDataset, StrideBlend, build_blending_indices
from megatiny.data.gpt_dataset import GPTDataset, build_indices
from megatiny.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder


@pytest.mark.parametrize("m", [1, 2, 3, 5, 64, 1000, 4097, (1 << 33) + 5])
def test_permutation_is_a_bijection_and_scalar_equals_vector(m):
    perm = block_index.KeyedPermutation(m, 7, 3)
    assert (perm.tables is None) == (m > 1 << 32)        # large domains use the splitmix rounds
    x = np.arange(min(m, 5000)) if m < 1 << 32 else np.random.default_rng(0).integers(0, m, 2000)
    vector = perm.array(x)
    assert [perm(int(v)) for v in x] == vector.tolist()
    assert vector.min() >= 0 and vector.max() < m
    if m < 1 << 32:
        assert sorted(vector.tolist()) == list(range(m))
    else:
        assert len(set(vector.tolist())) == len(x)
    if 1000 <= m < 1 << 32:
        assert np.corrcoef(np.arange(m), vector)[0, 1] ** 2 < 0.01     # not close to the identity
        other = block_index.KeyedPermutation(m, 8, 3).array(np.arange(m))
        assert (other != vector).mean() > 0.99


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """1000 documents whose tokens encode (document id, position): doc i holds i * 1000 + arange(len)."""
    d = tmp_path_factory.mktemp("block")
    rng = np.random.default_rng(0)
    lengths = rng.integers(0, 60, size=1000)          # includes empty documents
    with IndexedDatasetBuilder(d / "c", np.int32) as b:
        for i, n in enumerate(lengths):
            b.add_document(i * 1000 + np.arange(n))
    return IndexedDataset(d / "c"), lengths, d


def make(corpus, num_samples, seq_length=16, seed=1, rng=(0, 1000), name="train", cache="cache"):
    indexed, _, d = corpus
    return GPTDataset(indexed, rng, num_samples, seq_length, seed, d / cache, name=name, index="block")


def test_every_document_once_per_epoch_in_a_seeded_random_order(corpus):
    _, lengths, _ = corpus
    ds = make(corpus, 8000, rng=(100, 900))
    bi = ds.block_index
    assert bi.num_epochs >= 3
    orders = [bi.epoch_documents(e) for e in range(bi.num_epochs)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(100, 900))
    assert not np.array_equal(orders[0], orders[1])
    assert abs(np.corrcoef(orders[0], np.arange(800))[0, 1]) < 0.2       # shuffled, not by id
    # neighbours change between epochs: few document pairs stay adjacent
    pairs = [set(zip(o[:-1].tolist(), o[1:].tolist())) for o in orders]
    assert len(pairs[0] & pairs[1]) < 40
    again = make(corpus, 8000, rng=(100, 900), cache="other")
    np.testing.assert_array_equal(again.block_index.epoch_documents(1), orders[1])
    assert not np.array_equal(make(corpus, 8000, rng=(100, 900), seed=2).block_index.epoch_documents(0),
                              orders[0])


def test_samples_are_windows_of_the_epoch_streams(corpus):
    indexed, lengths, _ = corpus
    L = 16
    ds = make(corpus, 3000, seq_length=L)
    bi = ds.block_index
    stream = np.concatenate([np.concatenate([indexed[int(j)] for j in bi.epoch_documents(e)])
                             for e in range(bi.num_epochs)]).astype(np.int64)
    assert len(stream) == bi.num_epochs * int(lengths.sum())
    for i in range(len(ds)):
        s = bi.sample_of(i)
        np.testing.assert_array_equal(ds[i], stream[s * L:s * L + L + 1])


def test_no_sample_repeated_or_skipped_within_an_epoch_and_epochs_in_order(corpus):
    ds = make(corpus, 6000, seq_length=8)
    bi = ds.block_index
    starts = bi.starts
    served = np.array([bi.sample_of(i) for i in range(len(ds))])
    for e in range(bi.num_epochs):
        lo, hi = starts[e], min(starts[e + 1], len(ds))
        window = served[lo:hi]
        assert len(set(window.tolist())) == hi - lo                 # nothing repeated
        assert window.min() >= starts[e] and window.max() < starts[e + 1]
        if hi == starts[e + 1]:
            assert sorted(window.tolist()) == list(range(starts[e], starts[e + 1]))   # nothing skipped
    assert np.corrcoef(served[:starts[1]], np.arange(starts[1]))[0, 1] ** 2 < 0.01    # shuffled


def test_resume_at_any_sample_equals_the_uninterrupted_stream(corpus):
    from megatiny.data.sampler import PretrainingSampler

    ds = make(corpus, 400, seq_length=32)
    full = [ds[i] for batch in PretrainingSampler(400, 0, 4, 0, 1) for i in batch]
    for k in (0, 4, 100, 396):
        fresh = make(corpus, 400, seq_length=32)          # a new process: loads the cache, no state
        resumed = [fresh[i] for batch in PretrainingSampler(400, k, 4, 0, 1) for i in batch]
        assert all(np.array_equal(a, b) for a, b in zip(resumed, full[k:])) and len(resumed) == 400 - k


def test_cache_holds_o_blocks_not_o_samples(corpus):
    indexed, _, d = corpus
    ds = make(corpus, 100_000, seq_length=4, cache="big")
    files = sorted((d / "big").iterdir())
    assert {f.name.split(ds.hash + "-")[1] for f in files} == {
        f"{n}_index.npy" for n in block_index.ARRAY_NAMES} | {"description.json"}
    assert ds.block_index.num_epochs == 14
    assert sum(f.stat().st_size for f in files) < 40_000       # 100k samples; Megatron's arrays: ~1.3 MB
    again = make(corpus, 100_000, seq_length=4, cache="big")
    assert isinstance(again.block_index.cumulative, np.memmap) and again.block_index.num_epochs > 8
    picks = np.random.default_rng(0).integers(0, 100_000, size=300).tolist()    # jumps across epochs
    in_order = {i: ds[i] for i in sorted(picks)}
    for i in picks:                              # more epochs than the 8 cached tables: evicted, rebuilt
        np.testing.assert_array_equal(again[i], in_order[i])


@pytest.mark.parametrize("weights", [[0.7, 0.3], [0.5, 0.5], [0.2, 0.5, 0.3], [0.01, 0.99], [1, 1, 1, 1, 5]])
def test_stride_blend_keeps_every_window_close_to_the_weights(weights):
    blend = StrideBlend(weights)
    k, n = len(weights), 20_000
    w = np.asarray(weights) / np.sum(weights)
    picks = [blend[s] for s in range(n)]
    dataset = np.array([p[0] for p in picks])
    counts = np.zeros((n + 1, k), np.int64)
    np.add.at(counts[1:], (np.arange(n), dataset), 1)
    counts = counts.cumsum(axis=0)
    assert np.abs(counts - np.arange(n + 1)[:, None] * w).max() < 0.5 + k / 2    # every prefix
    for window in (10, 100, 1000):                                               # every window
        inside = counts[window:] - counts[:-window]
        assert np.abs(inside - window * w).max() < 1 + k
    for i in range(k):        # each dataset's samples are taken in order 0, 1, 2, ...
        assert [p[1] for p in picks if p[0] == i] == list(range(int((dataset == i).sum())))
    assert blend.taken_before(n) == counts[n].tolist()
    assert blend.taken_before(1_470_000_000)[0] == pytest.approx(w[0] * 1.47e9, abs=k)


def test_blended_block_datasets_get_exactly_their_share(corpus, tmp_path):
    indexed, _, d = corpus
    from megatiny.data.builder import _samples_per_dataset
    from megatiny.data.config import DataConfig

    cfg = DataConfig(data_path=f"0.7 {d / 'c'} 0.3 {d / 'c'}")
    counts = _samples_per_dataset(cfg.blends()["train"], 1001, cfg)
    assert sum(counts) == 1001
    parts = [make(corpus, counts[0], rng=(0, 500), name="a"),
             make(corpus, counts[1], rng=(500, 1000), name="b")]
    blend = BlendedDataset(parts, [0.7, 0.3], 1001, tmp_path, index="block")
    assert not list(tmp_path.iterdir())                     # a formula: nothing cached
    rows = [blend[i] for i in range(1001)]
    assert sum(int(r[0]) // 1000 < 500 for r in rows) in (700, 701)
    with pytest.raises(ValueError, match="only has"):
        BlendedDataset([parts[0], make(corpus, 10, name="c")], [0.7, 0.3], 1001, tmp_path, index="block")


def test_megatron_layout_is_bit_identical_to_the_previous_build():
    """Hashes of today's (commit bcb0687) build_indices / build_blending_indices on fixed inputs."""
    rng = np.random.default_rng(123)
    sizes = rng.integers(0, 300, size=5000).astype(np.int32)
    expected = {((0, 5000), 3000, 64, 7): "224e60eab76d1788d5a6309ffb3443db",
                ((100, 4000), 20000, 128, 1): "f4d0c592801ed785a4a08949580977b8",
                ((0, 5000), 700, 2048, 3): "49f15867bcc2509126dea6cd9550e037"}
    for (split, n, seq_length, seed), digest in expected.items():
        h = hashlib.sha256()
        for a in build_indices(sizes, split, n, seq_length, seed):
            h.update(np.ascontiguousarray(a).astype(np.int64).tobytes())
        assert h.hexdigest()[:32] == digest
    h = hashlib.sha256()
    for a in build_blending_indices([0.7, 0.3], 10000) + build_blending_indices([0.5, 0.3, 0.2], 3000):
        h.update(np.ascontiguousarray(a).astype(np.int64).tobytes())
    assert h.hexdigest()[:32] == "e1827e4e5dbed1e5d4c673d43d82aa07"


def test_megatron_dataset_reads_its_arrays_and_keeps_the_old_cache_names(corpus, tmp_path):
    indexed, _, _ = corpus
    ds = GPTDataset(indexed, (0, 1000), 500, 16, 4, tmp_path, index="megatron")
    document, sample, shuffle = build_indices(indexed.sequence_lengths, (0, 1000), 500, 16, 4)
    np.testing.assert_array_equal(ds.shuffle_index, shuffle)
    stream = np.concatenate([indexed[int(j)] for j in document]).astype(np.int64)
    for i in range(0, 500, 7):
        s = int(shuffle[i])
        np.testing.assert_array_equal(ds[i], stream[s * 16:s * 16 + 17])
    assert sorted(p.name.split(ds.hash)[1] for p in tmp_path.iterdir()) == [
        "-description.json", "-document_index.npy", "-sample_index.npy", "-shuffle_index.npy"]


def test_tinyllama_benchmark_runs_at_a_small_scale(tmp_path):
    import sys

    from tests.helpers import REPO_ROOT, run_command, timeout_s

    r = run_command([sys.executable, "benchmarks/data/bench_index_build.py", "--preset", "tinyllama",
                     "--scale", "2e-5", "--megatron-scale", "0.5", "--workdir", str(tmp_path / "w"),
                     "--access-seconds", "0.2"],
                    timeout=timeout_s(extra_s=120),
                    env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout
    assert "block index: build" in r.stdout and "megatron layout at 1/2 scale" in r.stdout
    assert not (tmp_path / "w").exists()     # the length tables are removed without --keep
