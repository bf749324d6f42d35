"""Generate text from a trained model.

    # a Hugging Face export, through transformers (what downstream users will run)
    python tools/generate.py --model runs/quickstart/hf --prompt "The Python tutorial"
    # any megatiny checkpoint (DeepSpeed root/tag, weights dir or HF dir), megatiny's KV-cache generator
    python tools/generate.py --model runs/quickstart/checkpoints --backend megatiny --prompt "def "

Greedy by default; --temperature > 0 samples, optionally with --top-k / --top-p.
"""
from __future__ import annotations

import argparse
import sys

import torch

from megatiny.precision import resolve_dtype


def generate_hf(model_dir: str, prompts: list[str], max_new_tokens: int, temperature: float,
                top_k: int | None, top_p: float | None, seed: int, dtype: torch.dtype) -> list[str]:
    """Continuations of `prompts` from an HF LlamaForCausalLM directory (offline)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True, dtype=dtype).eval()
    outputs = []
    for prompt in prompts:
        torch.manual_seed(seed)
        inputs = tokenizer(prompt, return_tensors="pt")
        sampling = {"do_sample": True, "temperature": temperature, "top_k": top_k or 0,
                    "top_p": top_p or 1.0} if temperature > 0 else {"do_sample": False}
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens,
                                   pad_token_id=tokenizer.eos_token_id, **sampling)
        outputs.append(tokenizer.decode(generated[0, inputs["input_ids"].shape[1]:],
                                        skip_special_tokens=True))
    return outputs


def generate_megatiny(path: str, tokenizer_path: str | None, prompts: list[str], max_new_tokens: int,
                      temperature: float, top_k: int | None, top_p: float | None,
                      seed: int, dtype: torch.dtype) -> list[str]:
    """Continuations of `prompts` from any checkpoint `megatiny.checkpoint.load_model` reads."""
    from megatiny.checkpoint import load_model
    from megatiny.data.tokenizer import load_tokenizer
    from megatiny.model.generate import generate

    model, metadata = load_model(path, dtype=dtype)
    tokenizer_path = tokenizer_path or metadata.get("tokenizer")
    if not tokenizer_path:
        raise SystemExit(f"{path}: the checkpoint names no tokenizer; pass --tokenizer")
    tokenizer = load_tokenizer(tokenizer_path)
    generator = torch.Generator().manual_seed(seed)
    outputs = []
    for prompt in prompts:
        prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
        input_ids = torch.tensor([prefix + tokenizer.encode(prompt)])
        tokens = generate(model, input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, eos_token_id=tokenizer.eos_id, generator=generator)
        new = [t for t in tokens[0, input_ids.shape[1]:].tolist() if t != tokenizer.eos_id]
        outputs.append(tokenizer.decode(new))
    return outputs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--model", required=True,
                        help="HF dir, or any megatiny checkpoint with --backend megatiny")
    parser.add_argument("--backend", choices=("hf", "megatiny"), default="hf")
    parser.add_argument("--tokenizer", help="tokenizer path (megatiny backend; default: the checkpoint's)")
    parser.add_argument("--prompt", action="append", required=True, help="repeatable")
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--top-k", type=int)
    parser.add_argument("--top-p", type=float)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dtype", default="auto",
                        help="float32 | bfloat16 | float16 | auto (as precision: auto picks; default)")
    args = parser.parse_args(argv)
    dtype = resolve_dtype(args.dtype)
    run = generate_hf if args.backend == "hf" else generate_megatiny
    extra = () if args.backend == "hf" else (args.tokenizer,)
    outputs = run(args.model, *extra, args.prompt, args.max_new_tokens, args.temperature,
                  args.top_k, args.top_p, args.seed, dtype)
    for prompt, text in zip(args.prompt, outputs):
        print(f"--- prompt: {prompt!r}\n{prompt}{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
