"""Streaming safetensors writer: the header first, then each tensor's bytes as it arrives.

`safetensors.torch.save_file` needs every tensor of a file in memory at once; converting a model
that way costs a whole shard of RAM on top of the source. The format is simple enough to write
incrementally (https://github.com/huggingface/safetensors, "Format"):

    8 bytes   little-endian u64 N, the header length
    N bytes   JSON: {name: {"dtype": "BF16", "shape": [...], "data_offsets": [begin, end]}, ...,
              "__metadata__": {"format": "pt"}}, padded with spaces to a multiple of 8 bytes
    rest      the tensors' bytes back to back, offsets relative to the end of the header

All shapes and dtypes are known before any data is read, so the header can be written first and
peak memory is one tensor.
"""
from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from pathlib import Path

import torch

SAFETENSORS_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def parse_size(value: str | int) -> int:
    """'2GB', '500MB', '10KiB', 1000 -> bytes (decimal units like HF: 1GB = 10^9 bytes)."""
    if isinstance(value, int):
        return value
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B)?\s*", str(value).upper())
    if not match:
        raise ValueError(f"size {value!r} is not understood; use e.g. 2GB, 500MB or a byte count")
    number, unit = float(match.group(1)), (match.group(2) or "B")
    base = 1024 if "I" in unit else 1000
    power = "BKMGT".index(unit[0]) if unit[0] != "B" else 0
    return int(number * base ** power)


def plan_shards(items: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype,
                max_shard_bytes: int) -> list[list[tuple[str, tuple[int, ...]]]]:
    """Split (name, shape) items, in order, into shards of at most `max_shard_bytes` each
    (a single tensor larger than the limit gets a shard of its own)."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in items:
        nbytes = _numel(shape) * itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    return shards


def write_safetensors(path: Path, items: list[tuple[str, tuple[int, ...]]], dtype: torch.dtype,
                      get: Callable[[str], torch.Tensor], metadata: dict[str, str] | None = None) -> int:
    """Write `items` (name, shape) to `path`, fetching each tensor with `get(name)` just before its
    bytes are written and casting it to `dtype`. Returns the number of data bytes."""
    tag = SAFETENSORS_DTYPES[dtype]
    itemsize = torch.empty((), dtype=dtype).element_size()
    header: dict[str, object] = {"__metadata__": {"format": "pt", **(metadata or {})}}
    offset = 0
    for name, shape in items:
        nbytes = _numel(shape) * itemsize
        header[name] = {"dtype": tag, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    blob += b" " * (-len(blob) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for name, shape in items:
            tensor = get(name)
            if tuple(tensor.shape) != tuple(shape):
                raise ValueError(f"{name}: tensor has shape {tuple(tensor.shape)}, expected {tuple(shape)}")
            data = tensor.detach().to(device="cpu", dtype=dtype).contiguous()
            f.write(data.reshape(-1).view(torch.uint8).numpy().data)
            del tensor, data
    return offset


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n
