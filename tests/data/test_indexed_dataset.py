"""MMIDIDX v1 writer/reader: round trips, golden bytes, corruption errors, merging."""
import struct

import numpy as np
import pytest

from megatiny.data.indexed_dataset import (
    DTYPE_CODES,
    IndexedDataset,
    IndexedDatasetBuilder,
    IndexFormatError,
    best_dtype,
)


def write(prefix, docs, dtype):
    with IndexedDatasetBuilder(prefix, dtype) as b:
        for d in docs:
            b.add_document(np.asarray(d))
    return IndexedDataset(prefix)


@pytest.mark.parametrize("code", sorted(DTYPE_CODES))
def test_round_trip_every_dtype(tmp_path, code):
    dtype = np.dtype(DTYPE_CODES[code])
    rng = np.random.default_rng(code)
    docs = [rng.integers(0, 100, size=n).astype(dtype) for n in (5, 0, 17, 1, 300)]
    ds = write(tmp_path / "d", docs, dtype)
    assert ds.dtype == dtype and len(ds) == 5 and ds.num_documents == 5
    for i, d in enumerate(docs):
        np.testing.assert_array_equal(ds[i], d)
        assert ds[i].dtype == dtype
    np.testing.assert_array_equal(ds.get(4, 10, 7), docs[4][10:17])
    assert ds.num_tokens == sum(len(d) for d in docs)
    assert (tmp_path / "d.idx").read_bytes()[17] == code


def test_golden_bytes(tmp_path):
    docs = [[1, 2, 3], [65000], [7, 8]]
    write(tmp_path / "g", docs, np.uint16)
    expected = b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", 8)
    expected += struct.pack("<Q", 3) + struct.pack("<Q", 4)
    expected += struct.pack("<3i", 3, 1, 2)            # lengths
    expected += struct.pack("<3q", 0, 6, 8)            # byte pointers (uint16 = 2 bytes each)
    expected += struct.pack("<4q", 0, 1, 2, 3)         # document index
    assert (tmp_path / "g.idx").read_bytes() == expected
    assert (tmp_path / "g.bin").read_bytes() == struct.pack("<6H", 1, 2, 3, 65000, 7, 8)


def test_reads_multi_sequence_documents_written_by_others(tmp_path):
    """Megatron files may group several sequences (e.g. sentences) into one document."""
    prefix = tmp_path / "m"
    lengths, tokens = [2, 3, 1], np.arange(6, dtype=np.int32)
    idx = b"MMIDIDX\x00\x00" + struct.pack("<QBQQ", 1, 4, 3, 3) + struct.pack("<3i", *lengths)
    idx += struct.pack("<3q", 0, 8, 20) + struct.pack("<3q", 0, 2, 3)
    (tmp_path / "m.idx").write_bytes(idx)
    (tmp_path / "m.bin").write_bytes(tokens.tobytes())
    ds = IndexedDataset(prefix)
    assert ds.num_documents == 2 and len(ds) == 3
    np.testing.assert_array_equal(ds.get_document(0), [0, 1, 2, 3, 4])
    np.testing.assert_array_equal(ds.get_document(1), [5])
    np.testing.assert_array_equal(ds.document_lengths(), [5, 1])


def test_views_are_zero_copy(tmp_path):
    ds = write(tmp_path / "z", [np.arange(1000)], np.int32)
    view = ds.get(0, 100, 10)
    assert not view.flags.owndata and not view.flags.writeable


def test_best_dtype():
    assert best_dtype(32000) == np.uint16
    assert best_dtype(65499) == np.uint16
    assert best_dtype(65500) == np.int32
    assert best_dtype(128256) == np.int32


def test_token_out_of_dtype_range_rejected(tmp_path):
    b = IndexedDatasetBuilder(tmp_path / "x", np.uint16)
    with pytest.raises(ValueError, match="do not fit uint16"):
        b.add_document(np.array([70000]))
    b.abort()
    assert list(tmp_path.iterdir()) == []
    b = IndexedDatasetBuilder(tmp_path / "x", np.uint16)
    with pytest.raises(ValueError, match=r"\[-1, 70000\] do not fit uint16"):
        b.add_items(np.array([1, 2, -1, 70000]), np.array([2, 2]))   # the batched path checks too
    b.add_items(np.array([1, 65535, 7], dtype=np.int64), np.array([1, 2]))
    b.finalize()
    ds = IndexedDataset(tmp_path / "x")
    assert [ds[i].tolist() for i in range(len(ds))] == [[1], [65535, 7]]


@pytest.fixture
def good(tmp_path):
    write(tmp_path / "c", [[1, 2, 3], [4, 5]], np.uint16)
    return tmp_path / "c"


def test_wrong_magic(good):
    p = good.with_suffix(".idx")
    p.write_bytes(b"XXXXXXXXX" + p.read_bytes()[9:])
    with pytest.raises(IndexFormatError, match=r"c\.idx.*bad magic"):
        IndexedDataset(good)


def test_unknown_version(good):
    p = good.with_suffix(".idx")
    data = p.read_bytes()
    p.write_bytes(data[:9] + struct.pack("<Q", 2) + data[17:])
    with pytest.raises(IndexFormatError, match="version 2 is not supported"):
        IndexedDataset(good)


def test_unknown_dtype(good):
    p = good.with_suffix(".idx")
    data = p.read_bytes()
    p.write_bytes(data[:17] + b"\x09" + data[18:])
    with pytest.raises(IndexFormatError, match="unknown dtype code 9"):
        IndexedDataset(good)


def test_truncated_idx(good):
    p = good.with_suffix(".idx")
    p.write_bytes(p.read_bytes()[:-5])
    with pytest.raises(IndexFormatError, match=r"c\.idx: truncated"):
        IndexedDataset(good)
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(IndexFormatError, match="truncated header"):
        IndexedDataset(good)


def test_bin_size_mismatch(good):
    p = good.with_suffix(".bin")
    p.write_bytes(p.read_bytes()[:-2])
    with pytest.raises(IndexFormatError, match=r"c\.bin: size 8 bytes disagrees"):
        IndexedDataset(good)


def test_missing_bin(good):
    good.with_suffix(".bin").unlink()
    with pytest.raises(FileNotFoundError, match=r"c\.bin: missing"):
        IndexedDataset(good)


def test_failed_write_leaves_previous_dataset_intact(good):
    before = good.with_suffix(".idx").read_bytes()
    with pytest.raises(RuntimeError):
        with IndexedDatasetBuilder(good, np.uint16) as b:
            b.add_document([9, 9])
            raise RuntimeError("crash mid-write")
    assert good.with_suffix(".idx").read_bytes() == before
    assert sorted(p.name for p in good.parent.iterdir()) == ["c.bin", "c.idx"]


def test_merge(tmp_path):
    a = write(tmp_path / "a", [[1, 2], [3]], np.uint16)
    b = write(tmp_path / "b", [[4, 5, 6]], np.uint16)
    with IndexedDatasetBuilder(tmp_path / "ab", np.uint16) as m:
        m.add_index(a.prefix)
        m.add_index(b.prefix)
    ab = IndexedDataset(tmp_path / "ab")
    assert [ab[i].tolist() for i in range(len(ab))] == [[1, 2], [3], [4, 5, 6]]
    assert ab.document_indices.tolist() == [0, 1, 2, 3]
    c = write(tmp_path / "c32", [[1]], np.int32)
    with pytest.raises(ValueError, match="dtypes cannot be merged"):
        with IndexedDatasetBuilder(tmp_path / "bad", np.uint16) as m:
            m.add_index(c.prefix)


def test_empty_dataset_and_pickling(tmp_path):
    import pickle

    empty = write(tmp_path / "e", [], np.uint16)
    assert len(empty) == 0 and empty.num_documents == 0 and empty.num_tokens == 0
    ds = write(tmp_path / "p", [[1, 2, 3], [4]], np.int32)
    clone = pickle.loads(pickle.dumps(ds))
    assert len(pickle.dumps(ds)) < 500                   # re-opened by path, not copied
    np.testing.assert_array_equal(clone[0], [1, 2, 3])
