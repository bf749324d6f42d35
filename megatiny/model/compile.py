"""torch.compile of each transformer block (`ModelRuntime.compile`), as torchtitan does for Llama.

Each block's `forward` is replaced by `torch.compile` of it; the model's own loop, the embedding,
final norm and the fused LM-head loss stay eager. Why per block and not the whole model:
- every block runs the same code on same-shaped tensors, and with dynamo's default
  `inline_inbuilt_nn_modules` the parameters are graph inputs, so all blocks share ONE compiled
  graph (one compile, whatever the depth);
- `forward` is compiled, not the module's `__call__`: the module hooks DeepSpeed registers (ZeRO-3
  gathers a module's parameters in a pre-forward hook) run eagerly around the compiled graph;
  hooks of the blocks' submodules are inlined, and those of DeepSpeed ZeRO-3 are
  `torch.compiler.disable`d, so under ZeRO-3 each of them is a graph break (counted by the tests);
- activation checkpointing wraps the compiled block (`torch.utils.checkpoint` recomputes it by
  calling it again), and the pipeline stages of `megatiny.model.pipeline` compile their blocks
  the same way.

The compiled code is cached by PyTorch (Inductor's FX-graph and AOTAutograd caches, on by
default) in $TORCHINDUCTOR_CACHE_DIR; `megatiny.training` points it at a per-user directory
(see `default_cache_dir`), so a restarted or resumed run of the same config reuses the kernels
instead of compiling them again (dynamo's tracing is still redone: a few seconds). That directory
has one subdirectory per CPU kind (`cache_dir_for_this_cpu`): Inductor's cache does not tell
apart graphs compiled for different CPU instruction sets (torch 2.13), and reusing one on another
crashes the process (measured: a graph cached with ATEN_CPU_CAPABILITY=avx2 aborts a run without
it, and the reverse segfaults), as it would on a home directory shared by unlike nodes.

`ModelRuntime.compile_backend` (`runtime.compile_backend`) picks torch.compile's backend:
"inductor" (the default: generated C++/Triton kernels) or "aot_eager", which traces the same
graphs (Dynamo's graph breaks, guards and recompiles, AOTAutograd's forward and backward) but runs
them with PyTorch's eager kernels: no code generated, no C++ compile, eager numerics. It is the
usual first step when a compiled run misbehaves (a problem that remains is in the tracing, one
that goes away is in Inductor), and the test suite's way to check the tracing of parallel
layouts without paying Inductor's compiles for each (tests/parallel/test_compile.py).
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path

import torch
import torch.nn as nn

from megatiny.precision import cpu_flags

CACHE_ENV = "TORCHINDUCTOR_CACHE_DIR"


def compile_blocks(blocks: Iterable[nn.Module], backend: str = "inductor") -> None:
    """Replace each block's `forward` by its version compiled with `backend` (`COMPILE_BACKENDS`;
    in place; idempotent)."""
    for block in blocks:
        if not getattr(block, "_megatiny_compiled", False):
            block.forward = torch.compile(block.forward, backend=backend)
            block._megatiny_compiled = True


# Environment variables that change the CPU code torch and Inductor generate (instruction-set caps).
CPU_ISA_ENV = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")


def cpu_kind() -> str:
    """A short name of this CPU's kind as compiled code sees it: a hash of the CPU's feature flags
    (/proc/cpuinfo, where there is one) and of the CPU_ISA_ENV caps set in the environment."""
    caps = [f"{key}={os.environ.get(key, '')}" for key in CPU_ISA_ENV]
    text = "\n".join([" ".join(sorted(cpu_flags())), *caps])
    return "cpu-" + hashlib.sha256(text.encode()).hexdigest()[:12]


def cache_dir_for_this_cpu(root: str | os.PathLike) -> Path:
    """ROOT/<cpu_kind()>: Inductor's cache for this CPU kind under a cache root shared by several."""
    return Path(root) / cpu_kind()


def default_cache_dir() -> Path:
    """Where compiled kernels are kept between runs when $TORCHINDUCTOR_CACHE_DIR is unset:
    $XDG_CACHE_HOME/megatiny/torchinductor/<cpu_kind()> (default ~/.cache/...), a per-user
    directory that, unlike PyTorch's own default /tmp/torchinductor_$USER, survives /tmp being
    cleaned between jobs."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return cache_dir_for_this_cpu(Path(base) / "megatiny" / "torchinductor")


def prepare_compile() -> str:
    """Call before building a model with compiled blocks under `deepspeed.zero.Init`: imports
    torch._dynamo (its first import fails inside zero.Init, which patches `torch.Tensor.__new__`;
    not imported at module level, as it costs ~1.5 s) and makes this process's Inductor cache
    $TORCHINDUCTOR_CACHE_DIR when set, else `default_cache_dir()` (set in the environment, where
    Inductor reads it, so its compile workers inherit it). Returns the cache directory."""
    import torch._dynamo  # noqa: F401
    return os.environ.setdefault(CACHE_ENV, str(default_cache_dir()))
