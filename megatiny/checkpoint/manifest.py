"""Checkpoint manifests: each rank lists files of a tag directory with their sizes and checksums,
so a resume (or `megatiny checkpoint verify`) can prove a checkpoint whole before loading it.

    step_00000100/manifest_rank{R}.json
        {"format_version": 1, "rank": R, "world_size": W, "algorithm": "crc32" | "sizes",
         "files": {"NAME": {"size": BYTES, "crc32": "8 hex digits"}, ...}}

Who lists what: after every rank wrote its DeepSpeed shards and RNG state (and the barrier that
follows), the tag directory's files, sorted by name, are dealt round-robin over the ranks
(`share_of`): rank R reads and checksums its share and writes `manifest_rank{R}.json`. Every file
is listed exactly once, the reading is spread over the ranks (on one host each file is still in
the page cache), and no rank has to know which files DeepSpeed wrote on which rank. The
checkpoint is marked complete (`megatiny.json`, then `latest`) only once all W manifests exist.

The checksum is zlib's CRC-32 streamed in 8 MiB blocks: it detects truncation, bit flips and
overwritten blocks (not deliberate tampering), and is the fastest of the checksums the standard
library has (`benchmarks/bench_checkpoint_hash.py`: crc32 vs blake2b vs a plain read).
`checkpoint.verify: sizes` writes and checks sizes only; `off` checks nothing on resume.

A tag directory without any manifest was written before manifests existed: it is accepted, and
the report says it was not verified.
"""
from __future__ import annotations

import json
import os
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from megatiny.fileio import atomic_write_text

MANIFEST_VERSION = 1
MANIFEST_PATTERN = re.compile(r"^manifest_rank(\d+)\.json$")
VERIFY_MODES = ("full", "sizes", "off")
BLOCK_BYTES = 8 * 2**20
NOT_LISTED = ("megatiny.json",)  # written after the manifests (it marks the checkpoint complete)


def manifest_name(rank: int) -> str:
    return f"manifest_rank{rank}.json"


def crc32_file(path: str | os.PathLike, block_bytes: int = BLOCK_BYTES) -> str:
    """CRC-32 of a file, read in blocks into one reused buffer; 8 hex digits."""
    crc = 0
    buffer = bytearray(block_bytes)
    view = memoryview(buffer)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buffer)
            if not n:
                break
            crc = zlib.crc32(view[:n], crc)
    return f"{crc & 0xFFFFFFFF:08x}"


def listable_files(tag_dir: str | os.PathLike) -> list[str]:
    """The files of a tag directory a manifest covers: every regular file, sorted, except the
    manifests themselves, `megatiny.json` and temporary (dot) files."""
    names = []
    for entry in os.scandir(tag_dir):
        if entry.is_file(follow_symlinks=False) and not entry.name.startswith(".") \
                and entry.name not in NOT_LISTED and not MANIFEST_PATTERN.match(entry.name):
            names.append(entry.name)
    return sorted(names)


def share_of(names: list[str], rank: int, world_size: int) -> list[str]:
    """Rank `rank`'s share of the sorted `names` (round-robin: every name in exactly one share)."""
    return names[rank::world_size]


def write_manifest(tag_dir: str | os.PathLike, rank: int, world_size: int, names: Iterable[str], *,
                   checksums: bool = True) -> Path:
    """Size (and CRC-32 when `checksums`) of each of `names` in `tag_dir`, written atomically to
    `manifest_rank{rank}.json`. Returns its path."""
    tag_dir = Path(tag_dir)
    files = {}
    for name in names:
        entry = {"size": (tag_dir / name).stat().st_size}
        if checksums:
            entry["crc32"] = crc32_file(tag_dir / name)
        files[name] = entry
    payload = {"format_version": MANIFEST_VERSION, "rank": rank, "world_size": world_size,
               "algorithm": "crc32" if checksums else "sizes", "files": files}
    return atomic_write_text(tag_dir / manifest_name(rank), json.dumps(payload, indent=1, sort_keys=True))


def manifest_ranks(tag_dir: str | os.PathLike) -> list[int]:
    """The ranks whose manifest exists in `tag_dir`, sorted."""
    out = []
    for entry in os.scandir(tag_dir):
        match = MANIFEST_PATTERN.match(entry.name)
        if match:
            out.append(int(match.group(1)))
    return sorted(out)


@dataclass
class VerifyReport:
    """What `verify` found: `problems` (each names a file), `files` checked, `bytes` read or sized,
    and `legacy` (no manifest at all: written before manifests, nothing checked)."""

    tag_dir: Path
    mode: str
    problems: list[str] = field(default_factory=list)
    files: int = 0
    bytes: int = 0
    legacy: bool = False

    @property
    def ok(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        if self.mode == "off":
            return f"{self.tag_dir}: not verified (checkpoint.verify=off)"
        if self.legacy:
            return f"{self.tag_dir}: no manifest (written before manifests existed): not verified"
        what = "sizes and CRC-32" if self.mode == "full" else "sizes"
        if self.ok:
            return f"{self.tag_dir}: OK, {self.files} files, {self.bytes / 2**20:.1f} MiB ({what} checked)"
        return f"{self.tag_dir}: DAMAGED ({what} checked):\n  " + "\n  ".join(self.problems)


def _read_manifest(path: Path) -> dict | str:
    """The manifest at `path`, or a sentence saying why it cannot be read."""
    try:
        payload = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        return f"{path.name}: unreadable manifest ({e})"
    if not isinstance(payload, dict) or not isinstance(payload.get("files"), dict) \
            or not isinstance(payload.get("world_size"), int):
        return f"{path.name}: not a manifest (no 'files' / 'world_size')"
    if payload.get("format_version") != MANIFEST_VERSION:
        version = payload.get("format_version")
        return f"{path.name}: manifest format_version {version!r} is not {MANIFEST_VERSION}"
    return payload


def verify(tag_dir: str | os.PathLike, mode: str = "full", *, ranks: Iterable[int] | None = None
           ) -> VerifyReport:
    """Check the files of `tag_dir` against its manifests: each listed file exists with its size
    (`sizes`), and its CRC-32 (`full`, where the manifest has one). `ranks`: check only these
    ranks' manifests (a resume spreads the reading over its ranks); default all of them, plus
    that no manifest is missing. `off` checks nothing."""
    if mode not in VERIFY_MODES:
        raise ValueError(f"checkpoint.verify must be one of {VERIFY_MODES}, got {mode!r}")
    tag_dir = Path(tag_dir)
    report = VerifyReport(tag_dir, mode)
    if mode == "off":
        return report
    present = manifest_ranks(tag_dir)
    if not present:
        report.legacy = True
        return report
    if ranks is None:
        report.problems += missing_manifests(tag_dir, present)
        ranks = present
    for rank in ranks:
        if rank not in present:
            continue  # named by whoever checks the whole set
        payload = _read_manifest(tag_dir / manifest_name(rank))
        if isinstance(payload, str):
            report.problems.append(payload)
            continue
        for name, entry in sorted(payload["files"].items()):
            report.problems += _check_file(tag_dir, name, entry, mode, report)
    return report


def missing_manifests(tag_dir: Path, present: list[int]) -> list[str]:
    """The manifests absent from `tag_dir` (`present`: those there), by the world size they record."""
    payload = _read_manifest(tag_dir / manifest_name(present[0]))
    if isinstance(payload, str):
        return []  # reported when its files are checked
    expected = payload["world_size"]
    return [f"{manifest_name(r)}: missing (the checkpoint was written by {expected} ranks)"
            for r in range(expected) if r not in present]


def _check_file(tag_dir: Path, name: str, entry: dict, mode: str, report: VerifyReport) -> list[str]:
    path = tag_dir / name
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return [f"{name}: missing"]
    report.files += 1
    report.bytes += size
    if size != entry.get("size"):
        state = "truncated" if size < entry.get("size", 0) else "grown"
        return [f"{name}: {state}, {size} bytes instead of {entry.get('size')}"]
    if mode == "full" and "crc32" in entry:
        found = crc32_file(path)
        if found != entry["crc32"]:
            return [f"{name}: altered, CRC-32 {found} instead of {entry['crc32']}"]
    return []
