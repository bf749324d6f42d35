"""Cost of checkpoint manifests: checksumming the files vs reading them, per GB and at 1.1B scale.

    python benchmarks/bench_checkpoint_hash.py [--gib 1.0] [--files 4] [--repeats 2] [--workdir DIR]

Writes `--files` files of random bytes (`--gib` GiB in all), then times, each `--repeats` times
(the best is kept), streaming them in 8 MiB blocks: a plain read (the floor: what any check of
the bytes costs), zlib CRC-32 (what `megatiny.checkpoint.manifest` uses), zlib Adler-32 and
hashlib BLAKE2b. Files just written sit in the page cache, as a rank's own shards do when it
checksums them right after saving; `--cold` drops them first (needs root) to measure the disk.

Printed: seconds per GB, GB/s, the ratio to the plain read, and the extrapolation to a 1.1B-
parameter ZeRO checkpoint (2.2 GB bf16 weights + 13.2 GB fp32 master weights and Adam moments
= 15.4 GB), for one rank reading it all and for 8 and 16 ranks each checksumming its share.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

from megatiny.process_env import exit_fast

BLOCK = 8 * 2**20
PARAMS_1B = 1.1e9
CHECKPOINT_1B_GB = (PARAMS_1B * 2 + PARAMS_1B * 12) / 1e9  # bf16 weights + fp32 master, m, v


def stream(paths: list[Path], update: Callable[[memoryview], None]) -> None:
    buffer = bytearray(BLOCK)
    view = memoryview(buffer)
    for path in paths:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buffer):
                update(view[:n])


def plain(paths: list[Path]) -> None:
    stream(paths, lambda block: None)


def crc32(paths: list[Path]) -> None:
    state = [0]
    stream(paths, lambda block: state.__setitem__(0, zlib.crc32(block, state[0])))


def adler32(paths: list[Path]) -> None:
    state = [1]
    stream(paths, lambda block: state.__setitem__(0, zlib.adler32(block, state[0])))


def blake2b(paths: list[Path]) -> None:
    digest = hashlib.blake2b()
    stream(paths, digest.update)


METHODS = {"plain read": plain, "crc32 (zlib)": crc32, "adler32 (zlib)": adler32,
           "blake2b (hashlib)": blake2b}


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gib", type=float, default=1.0)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--cold", action="store_true", help="drop the page cache before each pass (root)")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench_hash_", dir=args.workdir))
    try:
        size = int(args.gib * 2**30 / args.files)
        paths = []
        for i in range(args.files):
            path = workdir / f"shard_{i}.pt"
            with open(path, "wb") as f:
                for _ in range(0, size, BLOCK):
                    f.write(os.urandom(min(BLOCK, size)))
            paths.append(path)
        total_gb = sum(p.stat().st_size for p in paths) / 1e9
        plain(paths)  # warm the page cache once
        seconds = {}
        for name, method in METHODS.items():
            best = float("inf")
            for _ in range(args.repeats):
                if args.cold:
                    drop_caches()
                started = time.perf_counter()
                method(paths)
                best = min(best, time.perf_counter() - started)
            seconds[name] = best
        floor = seconds["plain read"]
        print(f"{total_gb:.2f} GB in {args.files} files, {'cold' if args.cold else 'page cache'}, "
              f"best of {args.repeats}, 8 MiB blocks")
        print(f"{'method':<20} {'s/GB':>7} {'GB/s':>7} {'x read':>7} {'1.1B: 1 rank':>13} "
              f"{'8 ranks':>8} {'16 ranks':>9}")
        for name, s in seconds.items():
            per_gb = s / total_gb
            whole = per_gb * CHECKPOINT_1B_GB
            print(f"{name:<20} {per_gb:7.3f} {1 / per_gb:7.2f} {s / floor:7.2f} {whole:12.1f}s "
                  f"{whole / 8:7.1f}s {whole / 16:8.1f}s")
        print(f"1.1B ZeRO checkpoint: {CHECKPOINT_1B_GB:.1f} GB (2.2 GB bf16 weights + 13.2 GB fp32 weights "
              "and Adam moments)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    exit_fast(main())
