"""Checkpoint maintenance: `megatiny checkpoint verify PATH` checks checkpoints against their manifests.

    megatiny checkpoint verify runs/tl/step_00002000          # one tag directory
    megatiny checkpoint verify runs/tl --mode sizes           # every step_* of a checkpoint root

Exit status 0 when every checkpoint checked verifies (or has no manifest: written before
manifests existed), 1 when any file is missing, truncated or altered (each is named), 2 when PATH
is neither a tag directory nor a checkpoint root.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from megatiny.checkpoint import layout
from megatiny.checkpoint.manifest import VERIFY_MODES, verify


def tag_dirs(path: Path) -> list[Path]:
    """The tag directories PATH means: itself, or every step_* of a checkpoint root, newest first."""
    if layout.kind_of(path) is layout.DirKind.TAG_DIR:
        return [path]
    tags = layout.list_tags(path)
    if not tags:
        raise FileNotFoundError(f"{path}: neither a checkpoint tag directory nor a root with step_* "
                                "directories")
    return [path / tag for tag in reversed(tags)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="action", required=True)
    check = sub.add_parser("verify", help="check files, sizes and CRC-32 against the manifests")
    check.add_argument("path", type=Path, help="tag directory or checkpoint root")
    check.add_argument("--mode", choices=[m for m in VERIFY_MODES if m != "off"], default="full",
                       help="full: sizes and CRC-32 (default); sizes: sizes only")
    args = parser.parse_args(argv)
    try:
        dirs = tag_dirs(args.path)
    except FileNotFoundError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    damaged = 0
    for tag_dir in dirs:
        report = verify(tag_dir, args.mode)
        if not layout.is_complete_tag(tag_dir):
            print(f"{tag_dir}: incomplete (no megatiny.json: its save never finished)")
        print(report.describe())
        damaged += not report.ok
    return 1 if damaged else 0


if __name__ == "__main__":
    sys.exit(main())
