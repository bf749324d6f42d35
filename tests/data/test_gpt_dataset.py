"""Packed GPT samples, `index: megatron`: index maths against Megatron's loop, contents, caching, epochs."""
import numpy as np
import pytest

from megatiny.data.gpt_dataset import (
    GPTDataset,
    build_sample_index,
    build_sample_index_reference,
    split_document_ranges,
)
from megatiny.data.indexed_dataset import IndexedDataset, IndexedDatasetBuilder


@pytest.mark.parametrize("seed", range(6))
def test_sample_index_matches_reference_loop(seed):
    rng = np.random.default_rng(seed)
    sizes = rng.integers(0 if seed % 2 else 1, 40, size=int(rng.integers(1, 60))).astype(np.int32)
    sizes[0] = max(sizes[0], 2)
    doc_index = rng.permutation(np.tile(np.arange(len(sizes)), 3)).astype(np.int32)
    for seq_length in (1, 3, 7, 16, 64):
        ref = build_sample_index_reference(sizes, doc_index, seq_length)
        for chunk in (1, 5, 1 << 20):      # chunked build must not depend on the chunk boundaries
            fast = build_sample_index(sizes, doc_index, seq_length, chunk=chunk)
            np.testing.assert_array_equal(fast, ref, err_msg=f"seq_length={seq_length} chunk={chunk}")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Documents whose tokens encode (document id, position) so samples can be checked exactly."""
    d = tmp_path_factory.mktemp("gpt")
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 50, size=40)
    docs = [(i * 100 + np.arange(n)).astype(np.int32) for i, n in enumerate(lengths)]
    with IndexedDatasetBuilder(d / "c", np.int32) as b:
        for doc in docs:
            b.add_document(doc)
    return IndexedDataset(d / "c"), docs, d


def expected_stream(ds, docs):
    di = np.asarray(ds.document_index)
    return np.concatenate([docs[j] for j in di])


def test_samples_are_windows_of_shuffled_document_stream(corpus):
    indexed, docs, d = corpus
    L = 16
    ds = GPTDataset(indexed, (0, len(docs)), 200, L, seed=3, cache_dir=d / "cache", index="megatron")
    stream = expected_stream(ds, docs)
    assert len(ds) == 200
    seen = set()
    for i in range(len(ds)):
        s = int(ds.shuffle_index[i])
        sample = ds[i]
        assert sample.dtype == np.int64 and sample.shape == (L + 1,)
        np.testing.assert_array_equal(sample, stream[s * L: s * L + L + 1])
        seen.add(s)
    assert len(seen) == 200


def test_multiple_epochs_each_document_once_per_epoch(corpus):
    indexed, docs, d = corpus
    tokens = sum(len(x) for x in docs)
    ds = GPTDataset(indexed, (0, len(docs)), 3 * tokens // 8, 8, seed=1, cache_dir=d / "cache",
                    index="megatron")
    counts = np.bincount(np.asarray(ds.document_index), minlength=len(docs))
    assert len(set(counts.tolist())) == 1 and counts[0] >= 3


def test_separate_last_epoch_shuffle(corpus):
    indexed, docs, d = corpus
    tokens = sum(len(x) for x in docs)
    L = 4
    per_epoch = (tokens - 1) // L
    ds = GPTDataset(indexed, (0, len(docs)), per_epoch + 5, L, seed=2, cache_dir=d / "cache",
                    index="megatron")
    di = np.asarray(ds.document_index)
    assert sorted(di[:len(docs)].tolist()) == list(range(len(docs)))    # epoch 1 complete
    assert sorted(di[len(docs):].tolist()) == list(range(len(docs)))    # last epoch shuffled on its own
    first = (tokens - 1) // L
    shuffle = np.asarray(ds.shuffle_index)
    assert sorted(shuffle[:first].tolist()) == list(range(first))       # first epoch's samples first


def test_deterministic_and_cached(corpus):
    indexed, docs, d = corpus
    a = GPTDataset(indexed, (0, 30), 50, 8, seed=5, cache_dir=d / "c2", index="megatron")
    files = sorted(p.name for p in (d / "c2").iterdir())
    assert len(files) == 4 and not any(f.startswith(".") for f in files)
    b = GPTDataset(indexed, (0, 30), 50, 8, seed=5, cache_dir=d / "c2", index="megatron")
    assert isinstance(b.shuffle_index, np.memmap)                       # loaded, not rebuilt
    fresh = GPTDataset(indexed, (0, 30), 50, 8, seed=5, cache_dir=d / "c3", index="megatron")
    for i in range(50):
        np.testing.assert_array_equal(a[i], b[i])
        np.testing.assert_array_equal(a[i], fresh[i])
    other = GPTDataset(indexed, (0, 30), 50, 8, seed=6, cache_dir=d / "c2", index="megatron")
    assert other.hash != a.hash
    assert not all(np.array_equal(a[i], other[i]) for i in range(50))


def test_split_range_only_reads_its_documents(corpus):
    indexed, docs, d = corpus
    ds = GPTDataset(indexed, (10, 20), 30, 8, seed=0, cache_dir=d / "cache", index="megatron")
    di = np.asarray(ds.document_index)
    assert di.min() >= 10 and di.max() < 20
    for i in range(len(ds)):
        assert set((ds[i] // 100).tolist()) <= set(range(10, 20))


def test_out_of_range_sample(corpus):
    indexed, docs, d = corpus
    ds = GPTDataset(indexed, (0, 40), 10, 8, seed=0, cache_dir=d / "cache", index="megatron")
    with pytest.raises(IndexError):
        ds[10]


def test_split_document_ranges():
    assert split_document_ranges(1000, [969, 30, 1]) == [(0, 969), (969, 999), (999, 1000)]
    assert split_document_ranges(10, [1, 0, 0]) == [(0, 10), (10, 10), (10, 10)]
    r = split_document_ranges(7, [1, 1, 1])
    assert r[0][0] == 0 and r[-1][1] == 7 and all(a <= b for a, b in r)


def test_random_ordered_sample_is_distinct_and_in_range():
    from megatiny.data.gpt_dataset import random_ordered_sample

    rng = np.random.default_rng(0)
    for lo, hi, k in ((0, 10, 10), (5, 1000, 30), (0, 100000, 400), (7, 9, 0)):
        x = random_ordered_sample(lo, hi, k, rng)
        assert len(x) == k == len(set(x.tolist())) and all(lo <= v < hi for v in x.tolist())
    firsts = [int(random_ordered_sample(0, 50, 3, rng)[0]) for _ in range(3000)]
    assert np.bincount(firsts, minlength=50).min() > 20       # every value can come first


def test_module_build_indices_is_what_the_dataset_and_the_benchmark_use(corpus, tmp_path):
    import sys

    from megatiny.data.gpt_dataset import build_indices
    from tests.helpers import REPO_ROOT, run_command, timeout_s

    ds, _, _ = corpus
    g = GPTDataset(ds, (3, 37), num_samples=90, seq_length=16, seed=5, cache_dir=tmp_path, index="megatron")
    timings: dict = {}
    arrays = build_indices(ds.sequence_lengths, (3, 37), 90, 16, 5, timings=timings)
    for mine, cached in zip(arrays, (g.document_index, g.sample_index, g.shuffle_index)):
        np.testing.assert_array_equal(mine, cached)
    assert set(timings) == {"document", "sample", "shuffle"}
    assert np.isin(ds.tokens[:5], ds[0][:5]).all()          # the public flat token array
    r = run_command([sys.executable, "benchmarks/data/bench_index_build.py", "--tokens", "2e6",
                     "--samples", "2000", "--seq-length", "64", "--mean-doc-length", "200"],
                    timeout=timeout_s(extra_s=60), env={"PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stdout
    assert "index build total" in r.stdout
