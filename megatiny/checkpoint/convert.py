"""Checkpoint conversion: any weights megatiny reads -> a Hugging Face Llama dir or a megatiny dir.

    export_hf(src, out)        DeepSpeed checkpoint (root or tag) / megatiny dir / HF dir
                               -> `LlamaForCausalLM` dir (config.json, generation_config.json,
                                  safetensors shards + index, tokenizer files)
    export_megatiny(src, out)  the same sources -> megatiny weights dir (megatiny.json +
                               model.safetensors); `import_hf` is this with an HF source

Both stream one tensor at a time (see `writer`), write into a temporary directory beside `out`
and rename it into place at the end, so a crash never leaves a half-written directory under the
final name and an existing `out` is only replaced when `overwrite=True`.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from megatiny.checkpoint import hf, sources, tokenizer_export
from megatiny.checkpoint.metadata import TrainState, write_metadata
from megatiny.checkpoint.writer import parse_size, plan_shards, write_safetensors
from megatiny.precision import parse_dtype


def export_hf(src: str | os.PathLike, out: str | os.PathLike, *, tag: str | None = None,
              weights: str = "auto", dtype: str | torch.dtype = "bfloat16",
              max_shard_size: str | int = "2GB", tokenizer: str | os.PathLike | None = None,
              include_tokenizer: bool = True, overwrite: bool = False) -> Path:
    """Write a Hugging Face `LlamaForCausalLM` directory at `out`; returns its path.

    `tokenizer` overrides the tokenizer recorded in the source's metadata (a sentencepiece
    `.model`, an HF tokenizer dir or a `tokenizer.json`). Without any tokenizer, pass
    `include_tokenizer=False` (the export is then weights + config only).
    """
    source = sources.open_weights(src, tag=tag, weights=weights)
    dtype = parse_dtype(dtype)
    tokenizer_path = _tokenizer_for(source, tokenizer, include_tokenizer)
    config = source.config
    table = hf.weight_table(config)
    hf_to_megatiny = {e.hf: e.megatiny for e in table}
    shards = plan_shards([(e.hf, e.shape) for e in table], dtype, parse_size(max_shard_size))
    with _atomic_dir(Path(out), overwrite) as tmp:
        _write_json(tmp / "config.json", hf.config_to_hf(config, dtype))
        _write_json(tmp / "generation_config.json", _generation_config(source))
        get = lambda name: source.tensor(hf_to_megatiny[name])  # noqa: E731
        if len(shards) == 1:
            write_safetensors(tmp / sources.SAFETENSORS_FILE, shards[0], dtype, get)
        else:
            weight_map, total = {}, 0
            for i, shard in enumerate(shards):
                file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
                total += write_safetensors(tmp / file, shard, dtype, get)
                weight_map.update({name: file for name, _ in shard})
            _write_json(tmp / sources.SAFETENSORS_INDEX,
                        {"metadata": {"total_size": total}, "weight_map": weight_map})
        if tokenizer_path is not None:
            tokenizer_export.export_tokenizer(tokenizer_path, tmp, config)
    return Path(out)


def export_megatiny(src: str | os.PathLike, out: str | os.PathLike, *, tag: str | None = None,
                    weights: str = "auto", dtype: str | torch.dtype | None = None,
                    tokenizer: str | os.PathLike | None = None, overwrite: bool = False) -> Path:
    """Write a megatiny weights directory (megatiny.json + model.safetensors) at `out`.

    `dtype` None keeps each tensor's stored dtype (fp32 for ZeRO master weights), so HF -> megatiny
    -> HF is bit-exact. The tokenizer is copied along: an HF source's tokenizer files into
    OUT/tokenizer/, a sentencepiece model to OUT/tokenizer.model (tokenizer.json likewise).
    """
    source = sources.open_weights(src, tag=tag, weights=weights)
    return _write_megatiny(source, Path(out), dtype, tokenizer, overwrite)


def save_model(model: torch.nn.Module, out: str | os.PathLike, *, tokenizer: str | os.PathLike | None = None,
               dtype: str | torch.dtype | None = None, step: int = 0, consumed_samples: int = 0,
               overwrite: bool = False) -> Path:
    """Save an in-memory GPT as a megatiny weights directory (megatiny.json + model.safetensors)."""
    metadata = {"tokenizer": str(tokenizer) if tokenizer is not None else None,
                "train_state": TrainState(step=step, consumed_samples=consumed_samples), "notes": {}}
    source = sources.StateDictSource(model.state_dict(), model.config, metadata)
    return _write_megatiny(source, Path(out), dtype, None, overwrite)


def _write_megatiny(source, out: Path, dtype, tokenizer, overwrite: bool) -> Path:
    items = [(e.megatiny, e.shape) for e in hf.weight_table(source.config)]
    if dtype is None:
        dtype = source.tensor(items[0][0]).dtype
    dtype = parse_dtype(dtype)
    tokenizer_path = tokenizer if tokenizer is not None else source.metadata.get("tokenizer")
    with _atomic_dir(out, overwrite) as tmp:
        write_safetensors(tmp / sources.SAFETENSORS_FILE, items, dtype, source.tensor)
        carried = Path(source.path) / GENERATION_CONFIG if source.path is not None else None
        if carried is not None and carried.is_file():  # an HF source's stop tokens travel along
            shutil.copy2(carried, tmp / GENERATION_CONFIG)
        recorded = tokenizer_path
        # the tokenizer travels with the weights (when it exists); record where it will live
        if tokenizer_path is not None and Path(tokenizer_path).is_dir():
            tokenizer_export.copy_hf_tokenizer_files(Path(tokenizer_path), tmp / "tokenizer")
            recorded = str(out.resolve() / "tokenizer")
        elif tokenizer_path is not None and Path(tokenizer_path).is_file():
            name = "tokenizer.json" if str(tokenizer_path).endswith(".json") else "tokenizer.model"
            shutil.copy2(tokenizer_path, tmp / name)
            recorded = str(out.resolve() / name)
        meta = source.metadata
        notes = dict(meta.get("notes") or {})
        if not isinstance(source, sources.StateDictSource):
            notes["converted_from"] = str(source.path)
        write_metadata(tmp, source.config, tokenizer=recorded, state=meta.get("train_state"), notes=notes)
    return out


GENERATION_CONFIG = "generation_config.json"


def _generation_config(source) -> dict:
    """The source's own generation_config.json when it has one (an HF dir, or a megatiny weights
    dir imported from one: e.g. an Instruct model's list of stop tokens), else bos/eos of its config."""
    path = Path(source.path) / GENERATION_CONFIG if source.path is not None else None
    if path is not None and path.is_file():
        try:
            values = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from None
        if isinstance(values, dict):
            return values
    return hf.generation_config(source.config)


def import_hf(hf_dir: str | os.PathLike, out: str | os.PathLike, *, dtype: str | torch.dtype | None = None,
              overwrite: bool = False) -> Path:
    """Hugging Face Llama dir -> megatiny weights dir (refuses architectures megatiny can't represent)."""
    if not (Path(hf_dir) / "config.json").is_file():
        raise FileNotFoundError(f"{hf_dir}: no config.json; not a Hugging Face model directory")
    return export_megatiny(hf_dir, out, dtype=dtype, overwrite=overwrite)


def _tokenizer_for(source, override, include: bool) -> Path | None:
    if not include:
        return None
    path = override if override is not None else source.metadata.get("tokenizer")
    if path is None:
        raise ValueError(f"{source.path}: no tokenizer recorded in its metadata; pass --tokenizer "
                         f"(sentencepiece .model, HF tokenizer dir or tokenizer.json) or --no-tokenizer")
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer {path} (recorded in {source.path}) does not exist; pass "
                                f"--tokenizer with its current location, or --no-tokenizer")
    return path


@contextmanager
def _atomic_dir(out: Path, overwrite: bool) -> Iterator[Path]:
    """Yield a temp dir beside `out`; on success rename it to `out` (replacing it if `overwrite`)."""
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; choose another output or pass --overwrite")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        if out.exists():
            old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, old / out.name)
            try:
                os.replace(tmp, out)
            except BaseException:
                os.replace(old / out.name, out)  # put the previous output back, not in a hidden dir
                old.rmdir()
                raise
            shutil.rmtree(old)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _write_json(path: Path, payload: dict) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n")
