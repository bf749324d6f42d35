"""Read full tensors out of a DeepSpeed ZeRO-1/2/3 checkpoint, one parameter at a time.

A DeepSpeed tag directory written with N data-parallel ranks holds, per rank r:
  `[bf16_]zero_pp_rank_{r}_mp_rank_00_optim_states.pt`: `optimizer_state_dict` with the rank's
      fp32 master weights: `fp32_flat_groups` (ZeRO-3) or `single_partition_of_fp32_groups`
      (ZeRO-1/2), one flat fp32 tensor per parameter group;
  model states (`zero_pp_rank_{r}_mp_rank_00_model_states.pt` for ZeRO-3, one
      `mp_rank_00_model_states.pt` for ZeRO-1/2): `param_shapes` (name -> shape per group, in the
      order the flat buffers were filled), `shared_params` (tied name -> stored name), and
      `module` (the 16-bit module state: full tensors for ZeRO-1/2, empty placeholders for ZeRO-3).

Flat layouts (what `deepspeed/utils/zero_to_fp32.py` also relies on):
  ZeRO-3: every parameter of numel n is split into N slices of ceil(n / N) elements (the last one
      zero-padded); rank r's flat buffer is the concatenation of its slice of each parameter in
      `param_shapes` order, so parameter k starts at the same offset on every rank.
  ZeRO-1/2: per group, the parameters (each followed by its `param_alignment_paddings` entry) are
      concatenated into one vector, padded at the end to a multiple of 2N, and cut into N equal
      partitions; rank r holds partition r, saved without the end padding (so the last one can
      be shorter).

The optimizer files are opened with `torch.load(mmap=True)`, so only the bytes of the parameter
being assembled are read; after copying them out we tell the kernel to drop those pages
(`madvise(MADV_DONTNEED)`, Linux) so resident memory stays at one parameter rather than growing to
the whole checkpoint. A 1.1B model converts in well under its bf16 size of extra memory.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import mmap
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from megatiny.checkpoint.layout import MODEL_STATES_ZERO3_MP, MODEL_STATES_ZERO12_MP

# group 1: the data-parallel rank, group 2: the model-parallel (tensor-parallel) rank
OPTIM_PATTERN = re.compile(r"^(?:bf16_)?zero_pp_rank_(\d+)_mp_rank_(\d+)_optim_states\.pt$")


def _load(path: Path) -> dict:
    """torch.load a DeepSpeed file lazily (mmap); its pickles reference DeepSpeed classes."""
    try:
        return torch.load(path, map_location="cpu", mmap=True, weights_only=False)
    except Exception as e:  # zip/pickle errors from truncated or foreign files
        raise ValueError(f"{path}: cannot read DeepSpeed checkpoint file ({type(e).__name__}: {e}); "
                         f"the file is truncated or not a DeepSpeed checkpoint") from None


@dataclass(frozen=True)
class _Piece:
    """Part of a parameter stored in one rank's flat buffer: `numel` elements from `start`."""

    rank: int
    group: int
    start: int
    numel: int


class ZeroCheckpoint:
    """A DeepSpeed ZeRO-1/2/3 tag directory; `tensor(name)` assembles one fp32 master weight.

    `shapes` maps each stored parameter name (the module's parameter names) to its full shape, in
    storage order. `shared` maps tied names that are not stored to the name holding their data.
    `model_parallel_rank` picks one tensor-parallel rank's files (`mp_rank_{MP:02d}`) of a
    checkpoint written with an `mpu`; the shapes are then that rank's shards.
    """

    def __init__(self, tag_dir: str | os.PathLike, model_parallel_rank: int = 0):
        self.tag_dir = Path(tag_dir)
        self.model_parallel_rank = model_parallel_rank
        model_states = self._model_states_file()
        states = _load(model_states)
        for key in ("param_shapes", "shared_params"):
            if key not in states:
                raise ValueError(f"{model_states}: field {key!r} missing; not a DeepSpeed ZeRO checkpoint")
        if states.get("frozen_param_shapes"):
            raise ValueError(f"{model_states}: frozen parameters {list(states['frozen_param_shapes'])} "
                             f"are not supported by megatiny conversion")
        self.group_shapes: list[dict[str, torch.Size]] = [dict(g) for g in states["param_shapes"]]
        self.shapes = {name: torch.Size(shape) for g in self.group_shapes for name, shape in g.items()}
        self.shared: dict[str, str] = dict(states["shared_params"])
        self.ds_version = states.get("ds_version")
        del states
        self._optim_files = self._find_optim_files()
        self._flat: list[list[torch.Tensor]] = []
        self._optim: list[dict] = []  # each rank's optimizer_state_dict (memory-mapped)
        self._state_flat: dict[str, list[list[torch.Tensor]]] = {}  # Adam moments, read on demand
        self.stage = -1
        for rank, path in enumerate(self._optim_files):
            optim = _load(path).get("optimizer_state_dict")
            if not isinstance(optim, dict) or "zero_stage" not in optim:
                raise ValueError(f"{path}: no 'optimizer_state_dict.zero_stage'; not a ZeRO-1/2/3 "
                                 f"optimizer file (ZeRO stage 0?); use --weights module")
            stage = int(optim["zero_stage"])
            if rank == 0:
                self._check_partition_count(optim, path)
                self.stage = stage
                self._alignment_paddings = optim.get("param_alignment_paddings")
            elif stage != self.stage:
                raise ValueError(f"{path}: ZeRO stage {stage} differs from rank 0's {self.stage}")
            key = "fp32_flat_groups" if stage == 3 else "single_partition_of_fp32_groups"
            if key not in optim:
                raise ValueError(f"{path}: field optimizer_state_dict.{key} missing (ZeRO stage {stage})")
            self._flat.append([t.detach() for t in optim[key]])
            self._optim.append(optim)
        self._releasable = {id(t) for rank, groups in enumerate(self._flat) for t in groups
                            if _is_mapped_from(t, self._optim_files[rank])}
        self._pieces = self._layout()

    # -- discovery --------------------------------------------------------------------------------

    def _model_states_file(self) -> Path:
        mp = self.model_parallel_rank
        names = (MODEL_STATES_ZERO3_MP.format(rank=0, mp=mp), MODEL_STATES_ZERO12_MP.format(mp=mp))
        for name in names:
            if (self.tag_dir / name).is_file():
                return self.tag_dir / name
        raise FileNotFoundError(f"{self.tag_dir}: no {names[0]} or {names[1]}; not a DeepSpeed checkpoint "
                                "tag directory (or not of this many tensor-parallel ranks)")

    def _find_optim_files(self) -> list[Path]:
        found = {}
        for path in self.tag_dir.iterdir():
            match = OPTIM_PATTERN.match(path.name)
            if match and int(match.group(2)) == self.model_parallel_rank:
                found[int(match.group(1))] = path
        if not found:
            raise FileNotFoundError(
                f"{self.tag_dir}: no *_optim_states.pt files (fp32 master weights); the checkpoint "
                f"was saved without optimizer state. Use --weights module for the 16-bit weights")
        self.world_size = max(found) + 1
        missing = [r for r in range(self.world_size) if r not in found]
        if missing:
            raise FileNotFoundError(f"{self.tag_dir}: optimizer shard(s) for rank(s) {missing} missing "
                                    f"(found ranks {sorted(found)}); the checkpoint is incomplete")
        return [found[r] for r in range(self.world_size)]

    def _check_partition_count(self, optim: dict, path: Path) -> None:
        count = optim.get("partition_count")
        count = max(count) if isinstance(count, (list, tuple)) else count
        if count is not None and int(count) != self.world_size:
            raise FileNotFoundError(
                f"{self.tag_dir}: checkpoint was saved by {count} data-parallel ranks but "
                f"{self.world_size} optimizer shard(s) are present (from {path.name}); a shard is "
                f"missing or left over from another run")

    # -- layout -----------------------------------------------------------------------------------

    def _layout(self) -> dict[str, list[_Piece]]:
        if self.stage == 3:
            return self._layout_zero3()
        if self.stage in (1, 2):
            return self._layout_zero12()
        raise ValueError(f"{self._optim_files[0]}: unsupported ZeRO stage {self.stage}")

    def _layout_zero3(self) -> dict[str, list[_Piece]]:
        n = self.world_size
        group_sizes = [t.numel() for t in self._flat[0]]
        for rank, groups in enumerate(self._flat):
            if [t.numel() for t in groups] != group_sizes:
                raise ValueError(f"{self._optim_files[rank]}: flat buffer sizes differ from rank 0's")
        pieces, offset = {}, 0
        for name, shape in self.shapes.items():
            per_rank = math.ceil(shape.numel() / n)
            local = _split_range(offset, per_rank, group_sizes)
            pieces[name] = [_Piece(r, g, s, k) for r in range(n) for g, s, k in local]
            offset += per_rank
        if offset != sum(group_sizes):
            raise ValueError(f"{self.tag_dir}: parameters need {offset} elements per rank but the "
                             f"fp32 buffers hold {sum(group_sizes)}; param_shapes and shards disagree")
        return pieces

    def _layout_zero12(self) -> dict[str, list[_Piece]]:
        n = self.world_size
        if len(self._flat[0]) != len(self.group_shapes):
            raise ValueError(f"{self.tag_dir}: {len(self._flat[0])} fp32 groups but "
                             f"{len(self.group_shapes)} param_shapes groups")
        pieces = {}
        for g, shapes in enumerate(self.group_shapes):
            # DeepSpeed saves each partition without the padding it added to the group's end, so
            # the last rank's partition can be shorter than the others.
            sizes = [self._flat[rank][g].numel() for rank in range(n)]
            if any(size != sizes[0] for size in sizes[:-1]) or sizes[-1] > sizes[0]:
                raise ValueError(f"{self.tag_dir}: partition sizes of group {g} {sizes} are inconsistent "
                                 f"(all equal but the last, which may be shorter)")
            paddings = (self._alignment_paddings[g] if self._alignment_paddings is not None
                        else [0] * len(shapes))
            offset = 0
            for (name, shape), pad in zip(shapes.items(), paddings):
                numel = shape.numel()
                pieces[name] = [_Piece(rank, g, start, count)
                                for rank, start, count in _split_range(offset, numel, sizes)]
                offset += numel + pad
            if not 0 <= sum(sizes) - offset < 2 * n:  # at most the alignment to 2 x world size
                raise ValueError(f"{self.tag_dir}: group {g} parameters need {offset} elements but "
                                 f"the {n} partitions hold {sum(sizes)}; param_shapes and shards disagree")
        return pieces

    # -- reading ----------------------------------------------------------------------------------

    def _base_optimizer_state(self, rank: int) -> dict:
        """Rank `rank`'s state_dict of the wrapped (torch) optimizer: {"state": {group: {...}}, ...}."""
        optim = self._optim[rank]
        key = "optimizer_state_dict" if self.stage == 3 else "base_optimizer_state"
        base = optim.get(key)
        if not isinstance(base, dict) or not isinstance(base.get("state"), dict):
            raise ValueError(f"{self._optim_files[rank]}: field optimizer_state_dict.{key}.state missing or "
                             "not a dict; this checkpoint's optimizer state cannot be read (saved with an "
                             "elastic checkpoint or without optimizer state?)")
        return base

    def _flat_buffers(self, state_key: str | None) -> list[list[torch.Tensor]]:
        """Per rank, per group: the flat buffer of the fp32 weights (None) or of optimizer state
        `state_key` ("exp_avg", "exp_avg_sq"), which are laid out exactly like the weights."""
        if state_key is None:
            return self._flat
        if state_key not in self._state_flat:
            buffers = []
            for rank, weights in enumerate(self._flat):
                state = self._base_optimizer_state(rank)["state"]
                groups = []
                for group, weight in enumerate(weights):
                    found = state.get(group, {}).get(state_key)
                    if found is None or found.numel() != weight.numel():
                        raise ValueError(f"{self._optim_files[rank]}: optimizer state {state_key!r} of group "
                                         f"{group} is missing or not shaped like its fp32 weights "
                                         "(not an Adam optimizer?)")
                    groups.append(found.detach())
                    if _is_mapped_from(found, self._optim_files[rank]):
                        self._releasable.add(id(groups[-1]))
                buffers.append(groups)
            self._state_flat[state_key] = buffers
        return self._state_flat[state_key]

    def optimizer_step(self) -> int:
        """The optimizer's step count (Adam's bias correction), as saved by rank 0."""
        state = self._base_optimizer_state(0)["state"]
        steps = {int(float(s["step"])) for s in state.values() if "step" in s}
        if len(steps) != 1:
            raise ValueError(f"{self._optim_files[0]}: optimizer step counts {sorted(steps)} (expected one)")
        return steps.pop()

    def tensor(self, name: str, state_key: str | None = None) -> torch.Tensor:
        """The full fp32 master weight `name` (a tied name resolves to its stored tensor), or, with
        `state_key` ("exp_avg" / "exp_avg_sq"), that optimizer state of it."""
        name = self.shared.get(name, name)
        if name not in self._pieces:
            raise KeyError(f"{self.tag_dir}: no parameter {name!r} in this checkpoint")
        flat = self._flat_buffers(state_key)
        shape = self.shapes[name]
        out = torch.empty(sum(p.numel for p in self._pieces[name]), dtype=torch.float32)
        at = 0
        for p in self._pieces[name]:
            src = flat[p.rank][p.group].narrow(0, p.start, p.numel)
            out.narrow(0, at, p.numel).copy_(src)
            if id(flat[p.rank][p.group]) in self._releasable:
                release_pages(src)
            at += p.numel
        return out[: shape.numel()].view(shape)

    def names(self) -> list[str]:
        """Stored names followed by tied (shared) names."""
        return list(self.shapes) + [n for n in self.shared if n not in self.shapes]

    def shape(self, name: str) -> torch.Size:
        return self.shapes[self.shared.get(name, name)]


def _split_range(start: int, numel: int, sizes: list[int]) -> list[tuple[int, int, int]]:
    """[start, start+numel) of a concatenation of buffers of `sizes` -> (buffer, offset, count)."""
    out, base = [], 0
    for i, size in enumerate(sizes):
        lo, hi = max(start, base), min(start + numel, base + size)
        if lo < hi:
            out.append((i, lo - base, hi - lo))
        base += size
    if sum(c for _, _, c in out) != numel:
        raise ValueError(f"range [{start}, {start + numel}) runs past the flat buffers ({base} elements)")
    return out


# -- keeping resident memory small --------------------------------------------------------------

_LIBC = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True) if os.name == "posix" else None
_MADV_DONTNEED = 4


def _is_mapped_from(t: torch.Tensor, path: Path) -> bool:
    """True if `t`'s memory lies in a mapping of file `path` (per /proc/self/maps): only then is it
    safe to drop its pages, which are re-read from the file when touched again. (Dropping pages of
    ordinary memory would zero them.)"""
    if t.numel() == 0:
        return False
    begin, end = t.data_ptr(), t.data_ptr() + t.numel() * t.element_size()
    target = os.path.realpath(path)
    try:
        with open("/proc/self/maps") as maps:
            for line in maps:
                fields = line.split(maxsplit=5)
                if len(fields) == 6 and fields[5].strip() == target:
                    lo, hi = (int(x, 16) for x in fields[0].split("-"))
                    if lo <= begin and end <= hi:
                        return True
    except OSError:
        pass
    return False


def release_pages(t: torch.Tensor) -> None:
    """Best effort: drop the whole pages under `t` from this process. Only for read-only
    file-backed memory (see `_is_mapped_from`)."""
    if _LIBC is None or t.numel() == 0 or not hasattr(_LIBC, "madvise"):
        return
    page = mmap.PAGESIZE
    begin = t.data_ptr()
    end = begin + t.numel() * t.element_size()
    first, last = -(-begin // page) * page, end // page * page  # only pages fully inside
    if last > first:
        _LIBC.madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)
