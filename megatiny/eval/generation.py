"""Text in, text out: continuations of prompts from an HF export or from any megatiny checkpoint.

The library side of `megatiny generate` (tools/generate.py). `generate_hf` runs transformers'
own `generate` (what downstream users of an export run); `generate_megatiny` loads any checkpoint
`megatiny.checkpoint.load_model` reads and decodes with `megatiny.model.generate.generate`.
"""
from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from megatiny.checkpoint import load_model
from megatiny.data.tokenizer import load_tokenizer
from megatiny.model.generate import generate


def generate_hf(model_dir: str, prompts: list[str], max_new_tokens: int, temperature: float,
                top_k: int | None, top_p: float | None, seed: int, dtype: torch.dtype) -> list[str]:
    """Continuations of `prompts` from an HF LlamaForCausalLM directory (offline)."""
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
    model, metadata = load_model(path, dtype=dtype)
    tokenizer_path = tokenizer_path or metadata.get("tokenizer")
    if not tokenizer_path:
        raise ValueError(f"{path}: the checkpoint names no tokenizer; pass --tokenizer")
    tokenizer = load_tokenizer(tokenizer_path)
    generator = torch.Generator().manual_seed(seed)
    # the tokenizer's EOS and every stop id of the model (Llama 3: a list), first the tokenizer's
    candidates = (tokenizer.eos_id, *model.config.eos_token_ids)
    stop_ids = list(dict.fromkeys(i for i in candidates if i is not None))
    outputs = []
    for prompt in prompts:
        prefix = [tokenizer.bos_id] if tokenizer.bos_id is not None else []
        input_ids = torch.tensor([prefix + tokenizer.encode(prompt)])
        tokens = generate(model, input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                          top_p=top_p, eos_token_id=stop_ids, generator=generator)
        new = [t for t in tokens[0, input_ids.shape[1]:].tolist() if t not in stop_ids]
        outputs.append(tokenizer.decode(new))
    return outputs
