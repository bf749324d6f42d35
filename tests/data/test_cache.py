"""IndexCache: one cache entry per key, arrays first and the description last, rebuilt when partial."""
import json

import numpy as np

from megatiny.data.cache import IndexCache


def test_entry_is_complete_only_with_its_description(tmp_path):
    builds = []

    def build():
        builds.append(1)
        return {"a": np.arange(5), "b": np.ones((2, 3), np.int32)}

    cache = IndexCache(tmp_path, "ds-train", {"seed": 1})
    arrays = cache.load_or_build(("a", "b"), build, lambda arrays: {"n": len(arrays["a"])})
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        f"ds-train-{cache.hash}-a_index.npy", f"ds-train-{cache.hash}-b_index.npy",
        f"ds-train-{cache.hash}-description.json"]
    assert json.loads(cache.description_path.read_text()) == {"n": 5}
    loaded = IndexCache(tmp_path, "ds-train", {"seed": 1}).load(("a", "b"))
    assert isinstance(loaded["a"], np.memmap) and np.array_equal(loaded["b"], arrays["b"])
    cache.description_path.unlink()                   # as if the writer died before finishing
    assert cache.load(("a", "b")) is None
    cache.load_or_build(("a", "b"), build, lambda arrays: {})
    assert len(builds) == 2
    assert IndexCache(tmp_path, "ds-train", {"seed": 2}).hash != cache.hash
