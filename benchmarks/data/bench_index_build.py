"""GPT sample-index build: the block index at TinyLlama scale, and Megatron's layout.

    OMP_NUM_THREADS=1 python benchmarks/data/bench_index_build.py --preset tinyllama [--workdir /tmp/x]
    OMP_NUM_THREADS=1 python benchmarks/data/bench_index_build.py [--tokens 100e9] [--samples 50e6]

--preset tinyllama: synthetic length tables of a SlimPajama-like source (590M documents, 627B
tokens) and a Starcoder-like one (206M documents, 250B tokens), blended 7:3, 1.47B samples of 2048
tokens (TinyLlama's 3T-token schedule). The tables are int32 files written in chunks under
--workdir (3.2 GB; deleted afterwards unless --keep) and memory-mapped, as an .idx's lengths are.
Each measured phase runs in a fresh child process, whose peak RSS (wait4) is reported:

  block index    `gpt_dataset.build_block_indices` per source (the path GPTDataset takes), saved
                 with `cache.IndexCache` (cache bytes = files on disk), blend counts from StrideBlend;
                 then random access: samples/s of (blend -> source -> token pieces) for random sample
                 numbers (the index lookups; reading the tokens is bench_sample_read.py's figure),
                 "warm" on the length-table mapping the build read (as on the rank that builds) and
                 "cold" on a fresh mapping (as on a rank that loads the cache: every block's 128
                 lengths then sit on pages this process has not touched yet, one minor page fault
                 each, until the table is mapped).
  megatron       the same for Megatron's materialized layout (`build_indices` +
                 `build_blending_indices`) at 1/30 of the scale (`--megatron-scale`), with a linear
                 extrapolation to full scale.

--scale shrinks the whole preset (for a quick run). Goals (2-core 24 GB machine): block index build
<= 30 s, peak RSS <= 6 GB, cache <= 1 GB, random access >= 20k samples/s.

Without --preset: the old single-dataset Megatron build (document/sample/shuffle timings).
"""
from __future__ import annotations

import argparse
import math
import multiprocessing as mp
import os
import queue as queue_module
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from megatiny.data.blended_dataset import StrideBlend, build_blending_indices
from megatiny.data.block_index import BlockSampleIndex
from megatiny.data.cache import IndexCache
from megatiny.data.gpt_dataset import (
    MegatronSampleIndex,
    build_block_indices,
    build_indices,
    count_tokens,
    num_epochs_needed,
)

TINYLLAMA = {"sources": [("slimpajama", 590e6, 627e9, 0.7), ("starcoder", 206e6, 250e9, 0.3)],
             "samples": 1.47e9, "seq_length": 2048}
GOALS = {"build_s": 30.0, "peak_rss_gb": 6.0, "cache_gb": 1.0, "samples_per_s": 20_000.0}


def write_length_table(path: Path, documents: int, tokens: float, seed: int, chunk: int = 1 << 24) -> None:
    """int32 document lengths, uniform in [1, 2 x mean - 1] (mean = tokens / documents), in chunks."""
    mean = tokens / documents
    rng = np.random.default_rng(seed)
    with open(path, "wb") as f:
        for lo in range(0, documents, chunk):
            n = min(chunk, documents - lo)
            f.write(rng.integers(1, max(2, int(round(2 * mean))), size=n, dtype=np.int32).tobytes())


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20      # KiB -> GiB


def rss_parts_gb() -> dict[str, float]:
    """Current anonymous and file-backed resident memory (/proc/self/status), GiB."""
    parts = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("RssAnon:", "RssFile:")):
                parts[line.split(":")[0]] = int(line.split()[1]) / 2**20
    return parts


def random_access_rate(blend, lookups: list, seconds: float = 5.0) -> float:
    """Samples per second of blend -> (source, sample) -> token pieces, at random sample numbers."""
    size = blend[1]
    rng = np.random.default_rng(0)
    order = rng.integers(0, size, size=1_000_000).tolist()
    done, t0, c0 = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds and done < len(order):
        for i in order[done:done + 1000]:
            source, j = blend[0](i)
            lookups[source].pieces(j)
        done += 1000
    return done / (time.perf_counter() - t0), done / (time.process_time() - c0)


def block_phase(tables: list, num_samples: int, seq_length: int, cache_dir: str, seconds: float,
                out) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    blend = StrideBlend([w for *_, w in tables])
    counts = blend.taken_before(num_samples)
    arrays, tables_read, cache_bytes, epochs = [], [], 0, []
    for (path, documents), n in zip([(t[0], t[1]) for t in tables], counts):
        sizes = np.memmap(path, dtype=np.int32, mode="r", shape=(documents,))
        a, _ = build_block_indices(sizes, (0, documents), n, seq_length, seed=1)
        arrays.append(a)
        tables_read.append(sizes)
        epochs.append(len(a["cumulative"]))
    build, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    build_rss, build_parts = peak_rss_gb(), rss_parts_gb()
    t1 = time.perf_counter()
    warm, cold = [], []
    for k, ((path, documents, *_), n, a, sizes) in enumerate(zip(tables, counts, arrays, tables_read)):
        cache = IndexCache(cache_dir, f"source{k}", {"n": n})
        cache.save(a, {"documents": documents})
        cache_bytes += sum(f.stat().st_size for f in Path(cache_dir).glob(f"{cache.base}-*"))
        loaded = cache.load(tuple(a))
        warm.append(BlockSampleIndex(loaded, sizes, (0, documents), n, seq_length, 1))
        fresh = np.memmap(path, dtype=np.int32, mode="r", shape=(documents,))
        cold.append(BlockSampleIndex(loaded, fresh, (0, documents), n, seq_length, 1))
    save = time.perf_counter() - t1
    del arrays
    rate, rate_cpu = random_access_rate((lambda i: blend[i], num_samples), warm, seconds)
    cold_rate, cold_cpu = random_access_rate((lambda i: blend[i], num_samples), cold, seconds)
    out.put({"build_s": build, "build_cpu_s": build_cpu, "save_s": save, "cache_bytes": cache_bytes,
             "samples_per_s": rate, "samples_per_cpu_s": rate_cpu, "cold_samples_per_s": cold_rate,
             "cold_samples_per_cpu_s": cold_cpu, "epochs": epochs, "samples_per_source": counts,
             "peak_rss_gb": build_rss, "rss_parts": build_parts, "final_peak_rss_gb": peak_rss_gb()})


def megatron_phase(tables: list, num_samples: int, seq_length: int, surplus: float, seconds: float,
                   out) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    dataset_index, dataset_sample = build_blending_indices([w for *_, w in tables], num_samples)
    lookups, nbytes = [], dataset_index.nbytes + dataset_sample.nbytes
    for path, documents, _, weight in tables:
        sizes = np.fromfile(path, dtype=np.int32, count=documents)
        n = math.ceil(weight * num_samples * (1 + surplus)) + 1
        arrays = build_indices(sizes, (0, documents), n, seq_length, seed=1)
        nbytes += sum(a.nbytes for a in arrays)
        lookups.append(MegatronSampleIndex(*arrays, sizes))
    build, build_cpu = time.perf_counter() - t0, time.process_time() - c0
    def source(i):
        return int(dataset_index[i]), int(dataset_sample[i])

    rate, rate_cpu = random_access_rate((source, num_samples), lookups, seconds)
    out.put({"build_s": build, "build_cpu_s": build_cpu, "cache_bytes": nbytes, "samples_per_s": rate,
             "samples_per_cpu_s": rate_cpu, "peak_rss_gb": peak_rss_gb()})


CHILD_TIMEOUT_S = 3 * 3600.0   # one index build at TinyLlama scale takes minutes; a hang, not this


def in_child(target, *args) -> dict:
    """Run target(*args, queue) in a fresh forked process; its result dict."""
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=target, args=(*args, queue))
    child.start()
    try:
        result = queue.get(timeout=CHILD_TIMEOUT_S)
    except queue_module.Empty:
        child.kill()
        child.join(timeout=10)
        raise RuntimeError(f"{target.__name__} gave no result within {CHILD_TIMEOUT_S:.0f} s "
                           f"(exit code {child.exitcode})") from None
    child.join(timeout=60)
    if child.exitcode != 0:
        raise RuntimeError(f"{target.__name__} failed with exit code {child.exitcode}")
    return result


def tinyllama(args) -> None:
    work = Path(args.workdir or tempfile.mkdtemp(prefix="bench_index_"))
    work.mkdir(parents=True, exist_ok=True)
    seq_length = TINYLLAMA["seq_length"]
    tables = []
    t0 = time.perf_counter()
    for k, (name, docs, tokens, weight) in enumerate(TINYLLAMA["sources"]):
        documents = int(docs * args.scale)
        path = work / f"{name}-{documents}.i32"
        if not path.is_file() or path.stat().st_size != 4 * documents:
            write_length_table(path, documents, tokens * args.scale, seed=k)
        tables.append((str(path), documents, tokens * args.scale, weight))
    total_samples = int(TINYLLAMA["samples"] * args.scale)
    described = [f"{Path(p).stem.split('-')[0]} {d / 1e6:.1f}M documents "
                 f"{count_tokens(np.memmap(p, dtype=np.int32, mode='r'), (0, d)) / 1e9:.1f}B tokens"
                 for p, d, *_ in tables]
    print(f"length tables ready in {time.perf_counter() - t0:.1f} s: {', '.join(described)}; blend 7:3, "
          f"{total_samples / 1e9:.3f}B samples of {seq_length}")
    try:
        cache_dir = work / "cache"
        shutil.rmtree(cache_dir, ignore_errors=True)
        block = in_child(block_phase, tables, total_samples, seq_length, str(cache_dir), args.access_seconds)
        parts = ", ".join(f"{k} {v:.2f}" for k, v in block["rss_parts"].items())
        print(f"block index: build {block['build_s']:.1f} s ({block['build_cpu_s']:.1f} CPU s; + save "
              f"{block['save_s']:.1f} s), peak RSS of the build {block['peak_rss_gb']:.2f} GiB (at its end: "
              f"{parts} GiB; the file part is the memory-mapped length tables), cache "
              f"{block['cache_bytes'] / 2**20:.0f} MiB, random access {block['samples_per_s']:,.0f} "
              f"samples/s ({block['samples_per_cpu_s']:,.0f} per CPU s; cold mapping "
              f"{block['cold_samples_per_s']:,.0f}, {block['cold_samples_per_cpu_s']:,.0f} per CPU s); "
              f"epochs {block['epochs']}, samples per source {block['samples_per_source']}; peak RSS after "
              f"both access runs {block['final_peak_rss_gb']:.2f} GiB (two mappings of the same tables)")
        ratios = {"build": block["build_s"] / GOALS["build_s"],
                  "RSS": block["peak_rss_gb"] / GOALS["peak_rss_gb"],
                  "cache": block["cache_bytes"] / 2**30 / GOALS["cache_gb"],
                  "access": GOALS["samples_per_s"] / block["samples_per_s"]}
        verdicts = [f"{k} {v:.2f} ({'met' if v <= 1 else 'NOT met'})" for k, v in ratios.items()]
        print("goals (build <= 30 s, RSS <= 6 GB, cache <= 1 GB, >= 20k samples/s), ratio to goal (<= 1 is "
              "met): " + ", ".join(verdicts))
        if args.megatron_scale > 0:
            f = args.megatron_scale
            small = []
            for path, documents, tokens, weight in tables:
                part = work / f"{Path(path).stem}-part.i32"
                n = int(documents * f)
                np.memmap(path, dtype=np.int32, mode="r")[:n].tofile(part)
                small.append((str(part), n, tokens * f, weight))
            mega = in_child(megatron_phase, small, int(total_samples * f), seq_length, 0.005,
                            args.access_seconds)
            x = 1 / f
            print(f"megatron layout at 1/{x:.0f} scale: build {mega['build_s']:.1f} s "
                  f"({mega['build_cpu_s']:.1f} CPU s), peak RSS {mega['peak_rss_gb']:.2f} GiB, arrays "
                  f"{mega['cache_bytes'] / 2**30:.2f} GiB, random access {mega['samples_per_s']:,.0f} "
                  f"samples/s ({mega['samples_per_cpu_s']:,.0f} per CPU s); linear extrapolation to full "
                  f"scale: "
                  f"~{mega['build_s'] * x / 60:.0f} min, ~{mega['cache_bytes'] * x / 2**30:.0f} GiB of "
                  f"arrays (block index / megatron: "
                  f"{block['cache_bytes'] / (mega['cache_bytes'] * x):.4f} of the bytes)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


def single_megatron(args) -> None:
    """The previous benchmark: one dataset, Megatron's layout, per-phase timings."""
    rng = np.random.default_rng(0)
    ndocs = int(args.tokens // args.mean_doc_length)
    sizes = rng.integers(1, 2 * args.mean_doc_length, size=ndocs, dtype=np.int32)
    num_samples, L = int(args.samples), args.seq_length
    tokens = int(sizes.sum(dtype=np.int64))
    print(f"{ndocs:,} documents, {tokens / 1e9:.1f}B tokens, {num_samples:,} samples of {L}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    doc_index, sample_index, shuffle_index = build_indices(sizes, (0, ndocs), num_samples, L, seed=1,
                                                           timings=timings)
    build = time.perf_counter() - t0
    print(f"epochs={num_epochs_needed(tokens, L, num_samples)} document_index={len(doc_index):,} "
          f"sample_index={len(sample_index) - 1:,}")
    print(f"document index {timings['document']:.2f} s, sample index {timings['sample']:.2f} s, "
          f"shuffle index {timings['shuffle']:.2f} s")
    print(f"index build total {build:.2f} s")
    t1 = time.perf_counter()
    build_block_indices(sizes, (0, ndocs), num_samples, L, seed=1)
    block = time.perf_counter() - t1
    print(f"block index build {block:.2f} s (ratio megatron / block {build / max(block, 1e-9):.1f})")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=["tinyllama"])
    p.add_argument("--scale", type=float, default=1.0,
                   help="fraction of the preset (documents, tokens, samples)")
    p.add_argument("--megatron-scale", type=float, default=1 / 30, help="0 skips the megatron layout")
    p.add_argument("--workdir", help="where the length tables go (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the length tables for the next run")
    p.add_argument("--access-seconds", type=float, default=5.0, help="duration of each random-access run")
    p.add_argument("--tokens", type=float, default=100e9)
    p.add_argument("--samples", type=float, default=50e6)
    p.add_argument("--seq-length", type=int, default=2048)
    p.add_argument("--mean-doc-length", type=int, default=2000)
    args = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    if args.preset == "tinyllama":
        tinyllama(args)
    else:
        single_megatron(args)


if __name__ == "__main__":
    main()
