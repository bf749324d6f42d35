"""Loglikelihood throughput of the `megatiny` lm-eval model: batched vs one request per forward,
and against lm-eval's `hf` model on the Hugging Face export of the same weights.

Requests are 5-shot multiple-choice prompts built from the bundled megatiny_local_mc items (each
question scored against its four choices, as lm-eval does), on a randomly initialised model of the
chosen preset. Each configuration runs --rounds times, alternating; the best round counts (the
machine may be shared). Also prints the largest log-likelihood difference between the backends.

    python benchmarks/bench_eval_throughput.py --preset micro-20m --batch 16 --items 64
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from megatiny.checkpoint import export_hf
from megatiny.checkpoint.metadata import write_metadata
from megatiny.data.tokenizer import load_tokenizer, train_sentencepiece
from megatiny.eval.lm_eval_adapter import MegatinyLM
from megatiny.eval.tasks import BUNDLED_TASKS_DIR
from megatiny.eval.tasks.local_data import read_jsonl
from megatiny.model import GPT, get_preset
from megatiny.process_env import exit_fast


def build_requests(items: list[dict], count: int, shots: int) -> list[tuple[str, str]]:
    def qa(item: dict, with_answer: bool) -> str:
        text = f"Question: {item['question']}\nAnswer:"
        return text + (f" {item['choices'][item['answer']]}\n\n" if with_answer else "")

    requests = []
    for i in range(count):
        item = items[i % len(items)]
        examples = [items[(i + k + 1) % len(items)] for k in range(shots)]
        context = "".join(qa(e, True) for e in examples) + qa(item, False)
        requests += [(context, f" {choice}") for choice in item["choices"]]
    return requests


def timed(lm, instances) -> tuple[float, list]:
    start = time.perf_counter()
    results = lm.loglikelihood(instances, disable_tqdm=True)
    return time.perf_counter() - start, results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="micro-20m")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--items", type=int, default=64, help="questions (x4 requests)")
    parser.add_argument("--shots", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model

    items = read_jsonl(BUNDLED_TASKS_DIR / "megatiny_local_mc.jsonl")
    requests = build_requests(items, args.items, args.shots)
    instances = [Instance("loglikelihood", {}, r, i) for i, r in enumerate(requests)]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        texts = [f"Question: {d['question']}\nAnswer: {' '.join(d['choices'])}" for d in items]
        tok_path = train_sentencepiece(texts * 4, tmp / "spm", vocab_size=1024)
        tokenizer = load_tokenizer(tok_path)
        torch.manual_seed(0)
        config = get_preset(args.preset, max_position_embeddings=2048)
        model = GPT(config).eval()
        weights = tmp / "weights"
        weights.mkdir()
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(weights / "model.safetensors"))
        write_metadata(weights, config, tokenizer=str(tok_path))
        hf_dir = export_hf(weights, tmp / "hf", dtype="float32")

        ours = f"megatiny batch {args.batch}"
        lms = {
            "megatiny batch 1": MegatinyLM(model=model, tokenizer=tokenizer, batch_size=1,
                                           device=args.device),
            ours: MegatinyLM(model=model, tokenizer=tokenizer, batch_size=args.batch, device=args.device),
            f"hf batch {args.batch}": get_model("hf").create_from_arg_obj(
                {"pretrained": str(hf_dir), "dtype": "float32", "device": args.device,
                 "batch_size": args.batch}),
        }
        best: dict[str, float] = {}
        outputs: dict[str, list] = {}
        for _ in range(args.rounds):
            for name, lm in lms.items():
                seconds, outputs[name] = timed(lm, instances)
                best[name] = min(best.get(name, float("inf")), seconds)

    tokens = sum(len(tokenizer.encode(c + x)) + 1 for c, x in requests)
    print(f"preset {args.preset} ({config.num_parameters() / 1e6:.1f}M params), {len(requests)} requests, "
          f"{tokens} tokens, device {args.device}, threads {args.threads}")
    baseline = best["megatiny batch 1"]
    for name, seconds in best.items():
        print(f"{name:>20}: {seconds:7.2f} s  {len(requests) / seconds:8.1f} requests/s  "
              f"{tokens / seconds:9.0f} tokens/s  speed-up vs megatiny batch 1: {baseline / seconds:5.2f}x")
    hf = f"hf batch {args.batch}"
    diff = max(abs(a[0] - b[0]) for a, b in zip(outputs[ours], outputs[hf]))
    print(f"{ours} vs {hf}: {best[hf] / best[ours]:.2f}x the speed; "
          f"largest log-likelihood difference {diff:.2e}")


if __name__ == "__main__":
    main()
    exit_fast(0)
