"""Preprocessing throughput vs the raw tokenizer, worker scaling, and peak memory vs input size.

    OMP_NUM_THREADS=1 python benchmarks/data/bench_preprocess.py [--mb 40] [--workers 1 2]

Makes a synthetic jsonl corpus and a 8k-vocab sentencepiece BPE tokenizer (trained here, no
downloads), then prints, all measured in this run on the same text:
  * raw tokenizer: `encode` of every document in one process (tokens/s, MB/s);
  * tools/preprocess_data.py with N workers: MB/s (processing loop, from its summary line) and the
    ratio to N x raw (goal >= 0.9); CPU seconds of the main and worker processes, so per-worker
    efficiency and scaling headroom show even on a machine with fewer free cores than workers;
  * peak RSS of a preprocessing run (main + worker processes) on the corpus and on a corpus
    twice as large: bounded memory means the two peaks are about equal.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from megatiny.data.tokenizer import load_tokenizer, train_sentencepiece

RUN_TIMEOUT_S = 3600.0   # one preprocess run of the benchmark corpus

WORDS = ("the of and to in is was for on that with as by at from his her an were are which this be "
         "it not or have had has but they you one their all we can been more when there some would "
         "pretraining language model token dataset layer attention über café naïve 東京 2024 3.14").split()


def write_corpus(path: Path, megabytes: float, seed: int = 0) -> None:
    rng = random.Random(seed)
    target = int(megabytes * 1e6)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < target:
            n = rng.randint(50, 1500)
            text = " ".join(rng.choice(WORDS) for _ in range(n)) + "."
            line = json.dumps({"text": text, "id": written}, ensure_ascii=False) + "\n"
            f.write(line)
            written += len(line.encode())


def raw_tokenizer_seconds(corpus: Path, model: Path) -> tuple[float, float, int, int]:
    """Wall and CPU seconds of encoding every document, token count, corpus bytes."""
    texts = [json.loads(line)["text"] for line in corpus.open(encoding="utf-8")]
    tok = load_tokenizer(model)
    start, cpu = time.perf_counter(), time.process_time()
    tokens = sum(len(tok.encode(t)) for t in texts)
    return time.perf_counter() - start, time.process_time() - cpu, tokens, corpus.stat().st_size


def run_preprocess(corpus: Path, model: Path, out: Path, workers: int) -> dict:
    """Run the CLI in a fresh process: processing seconds (its summary line), peak RSS (KiB, largest
    process), and CPU seconds of the main process and of the worker processes."""
    code = ("import resource, sys; from tools.preprocess_data import main; rc = main(sys.argv[1:]); "
            "s = resource.getrusage(resource.RUSAGE_SELF); c = resource.getrusage(resource.RUSAGE_CHILDREN); "
            "print('STATS', max(s.ru_maxrss, c.ru_maxrss), s.ru_utime + s.ru_stime, "
            "c.ru_utime + c.ru_stime); "
            "sys.exit(rc)")
    cmd = [sys.executable, "-c", code, "--input", str(corpus), "--output-prefix", str(out), "--tokenizer",
           str(model), "--workers", str(workers), "--append-eod", "--prepend-bos", "--no-progress"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]), OMP_NUM_THREADS="1")
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=RUN_TIMEOUT_S)
    if r.returncode != 0:
        raise SystemExit(r.stdout + r.stderr)
    lines = r.stdout.splitlines()
    peak, main_cpu, child_cpu = next(x.split()[1:] for x in lines if x.startswith("STATS"))
    done = next(x for x in lines if x.startswith("done:"))
    seconds = float(re.search(r" in ([0-9.]+) s", done).group(1))
    return {"seconds": seconds, "peak_kib": int(peak), "main_cpu": float(main_cpu),
            "worker_cpu": float(child_cpu)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=float, default=40.0, help="corpus size in MB")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        corpus, big = d / "corpus.jsonl", d / "big.jsonl"
        write_corpus(corpus, args.mb)
        write_corpus(big, 2 * args.mb, seed=1)
        texts = (json.loads(line)["text"] for i, line in enumerate(corpus.open()) if i < 2000)
        model = train_sentencepiece(texts, d / "tok", 8000)
        raw_s, raw_cpu, tokens, nbytes = raw_tokenizer_seconds(corpus, model)
        raw_mbs = nbytes / 1e6 / raw_s
        print(f"corpus {nbytes / 1e6:.1f} MB, {tokens:,} tokens")
        print(f"raw tokenizer (1 process): {tokens / raw_s:,.0f} tokens/s, {raw_mbs:.2f} MB/s "
              f"({raw_cpu:.1f} CPU s)")
        base = None
        for w in args.workers:
            r = run_preprocess(corpus, model, d / f"out{w}", w)
            mbs = nbytes / 1e6 / r["seconds"]
            base = base or mbs
            print(f"preprocess --workers {w}: {tokens / r['seconds']:,.0f} tokens/s, {mbs:.2f} MB/s, "
                  f"ratio to {w} x raw tokenizer {mbs / (w * raw_mbs):.2f}, "
                  f"speedup vs 1 worker {mbs / base:.2f}; CPU s: main {r['main_cpu']:.1f}, "
                  f"workers {r['worker_cpu']:.1f} (raw tokenizer {raw_cpu:.1f}); "
                  f"peak RSS {r['peak_kib'] / 1024:.0f} MiB")
            busy = r["worker_cpu"] if w > 1 else r["main_cpu"]
            print(f"  CPU efficiency (raw tokenizer CPU / tokenizing-process CPU) {raw_cpu / busy:.2f}"
                  + (f"; the main process could feed {r['worker_cpu'] / r['main_cpu']:.1f} busy workers"
                     if w > 1 else ""))
        r2 = run_preprocess(big, model, d / "big", max(args.workers))
        print(f"peak RSS on {2 * args.mb:.0f} MB input: {r2['peak_kib'] / 1024:.0f} MiB (vs "
              f"{r['peak_kib'] / 1024:.0f} MiB on {args.mb:.0f} MB): "
              f"ratio {r2['peak_kib'] / r['peak_kib']:.2f}")


if __name__ == "__main__":
    main()
