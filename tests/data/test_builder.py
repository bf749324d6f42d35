"""DataConfig parsing and build_gpt_datasets: blends, splits by document, separate paths, caching."""
import json

import numpy as np
import pytest

from megatiny.data import DataConfig, build_gpt_datasets, describe_datasets
from megatiny.data.config import parse_blend, parse_split
from megatiny.data.indexed_dataset import IndexedDatasetBuilder


@pytest.fixture(scope="module")
def prefixes(tmp_path_factory):
    d = tmp_path_factory.mktemp("builder")
    out = []
    for tag, ndocs in ((1, 300), (2, 200)):
        rng = np.random.default_rng(tag)
        with IndexedDatasetBuilder(d / f"src{tag}", np.uint16) as b:
            for doc in range(ndocs):
                # token = tag * 10000 + document number: reveals which dataset/document it came from
                b.add_document(np.full(int(rng.integers(5, 40)), tag * 10000 + doc))
        out.append(str(d / f"src{tag}"))
    return out, d


def test_parse_blend_and_split():
    assert parse_blend("0.7 A 0.3 B") == [(0.7, "A"), (0.3, "B")]
    assert parse_blend("A") == [(1.0, "A")]
    assert parse_blend("2 A 6 B") == [(0.25, "A"), (0.75, "B")]
    with pytest.raises(ValueError, match="odd number"):
        parse_blend("0.7 A 0.3")
    with pytest.raises(ValueError, match="negative"):
        parse_blend("-1 A 2 B")
    assert parse_split("969,30,1") == [969.0, 30.0, 1.0]
    assert parse_split("98,2") == [98.0, 2.0, 0.0]
    with pytest.raises(ValueError, match="split"):
        parse_split("a,b")


def test_config_validation():
    with pytest.raises(ValueError, match="data_path"):
        DataConfig()
    with pytest.raises(ValueError, match="not both"):
        DataConfig(data_path="A", train_data_path="B")
    with pytest.raises(ValueError, match="unknown field"):
        DataConfig.from_dict({"data_path": "A", "bogus": 1})
    with pytest.raises(ValueError, match="top-level `tokenizer:`"):     # was silently ignored
        DataConfig.from_dict({"data_path": "A", "tokenizer": "tok.model"})
    c = DataConfig(data_path="0.5 A 0.5 B")
    assert DataConfig.from_dict(json.loads(json.dumps(c.to_dict()))) == c


def test_blend_with_split(prefixes):
    (a, b), d = prefixes
    cfg = DataConfig(data_path=f"0.7 {a} 0.3 {b}", split="90,10,0", cache_dir=str(d / "cache"))
    train, valid, test = build_gpt_datasets(cfg, 16, (500, 40, 0), seed=1)
    assert test is None
    assert len(train) == 500 and len(valid) == 40
    src = np.array([int(train[i][0]) // 10000 for i in range(500)])
    assert (src == 1).sum() == 350 and (src == 2).sum() == 150
    # split by document: train never sees a valid document and vice versa
    train_docs = {int(t) for i in range(500) for t in train[i]}
    valid_docs = {int(t) for i in range(40) for t in valid[i]}
    assert not train_docs & valid_docs
    assert max(t % 10000 for t in train_docs if t // 10000 == 1) < 270
    json.dumps(describe_datasets((train, valid, test)))


def test_second_call_loads_from_cache(prefixes):
    (a, b), d = prefixes
    cfg = DataConfig(data_path=f"0.7 {a} 0.3 {b}", split="90,10,0", cache_dir=str(d / "cache2"),
                     index="megatron")
    first = build_gpt_datasets(cfg, 16, (100, 0, 0), seed=1)[0]
    n_files = len(list((d / "cache2").iterdir()))
    again = build_gpt_datasets(cfg, 16, (100, 0, 0), seed=1)[0]
    assert len(list((d / "cache2").iterdir())) == n_files
    assert isinstance(again.dataset_index, np.memmap)
    for i in range(100):
        np.testing.assert_array_equal(first[i], again[i])


def test_separate_paths(prefixes):
    (a, b), d = prefixes
    cfg = DataConfig(train_data_path=a, valid_data_path=b, cache_dir=str(d / "cache3"))
    train, valid, test = build_gpt_datasets(cfg, 8, (50, 20, 0), seed=0)
    assert all(int(t) // 10000 == 1 for i in range(50) for t in train[i])
    assert all(int(t) // 10000 == 2 for i in range(20) for t in valid[i])
    with pytest.raises(ValueError, match="test"):
        build_gpt_datasets(cfg, 8, (50, 20, 5), seed=0)


def test_empty_split_requested_is_an_error(prefixes):
    (a, _), d = prefixes
    cfg = DataConfig(data_path=a, split="100,0,0", cache_dir=str(d / "cache4"))
    with pytest.raises(ValueError, match="valid"):
        build_gpt_datasets(cfg, 8, (10, 5, 0), seed=0)


def _build_in_child(cfg, queue):
    train = build_gpt_datasets(cfg, 16, (300, 0, 0), seed=9)[0]
    queue.put(np.stack([train[i] for i in range(len(train))]))


def test_concurrent_builders_share_one_cache(prefixes):
    """Ranks racing to build the same cache (no barrier) all get identical, complete indexes."""
    import multiprocessing as mp

    (a, b), d = prefixes
    cfg = DataConfig(data_path=f"0.6 {a} 0.4 {b}", split="1,0,0", cache_dir=str(d / "race"))
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_build_in_child, args=(cfg, queue)) for _ in range(3)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])
    assert not [p.name for p in (d / "race").iterdir() if p.name.startswith(".")]   # no temp files left
    again = build_gpt_datasets(cfg, 16, (300, 0, 0), seed=9)[0]
    np.testing.assert_array_equal(np.stack([again[i] for i in range(300)]), results[0])


def test_tiny_blends_and_zero_weights(prefixes):
    """Small sample counts never ask a dataset for fewer samples than the greedy draws from it."""
    (a, b), d = prefixes
    for n in range(1, 40):
        cfg = DataConfig(data_path=f"0.5 {a} 0.5 {b}", split="1,0,0", cache_dir=str(d / "tiny"))
        train = build_gpt_datasets(cfg, 8, (n, 0, 0), seed=0)[0]
        assert len(train) == n and train[n - 1].shape == (9,)
    cfg = DataConfig(data_path=f"1 {a} 0 {b}", split="1,0,0", cache_dir=str(d / "zero"))
    train = build_gpt_datasets(cfg, 8, (50, 0, 0), seed=0)[0]
    assert all(int(t) // 10000 == 1 for i in range(50) for t in train[i])
