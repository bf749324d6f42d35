"""Rebuild the quickstart's bundled corpus (examples/quickstart/corpus/) from local sources.

Natural language: the reStructuredText sources of the Python 3.11 documentation (Debian package
python3.11-doc, `html/_sources/**/*.rst.txt`), with markup reduced to plain prose and literal
blocks dropped. Code: modules of the CPython 3.11 standard library. Both are under the PSF
License (see corpus/LICENSE-PSF.txt). Sizes follow TinyLlama's 7:3 natural-language:code mix.

    apt-get download python3.11-doc && dpkg -x python3.11-doc_*.deb /tmp/pydoc
    python examples/quickstart/build_corpus.py --docs /tmp/pydoc/usr/share/doc/python3.11/html/_sources \
        --stdlib "$(python3 -c 'import sysconfig; print(sysconfig.get_paths()["stdlib"])')"
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import re
from pathlib import Path

import zstandard

ROLE = re.compile(r":[a-zA-Z:]+:`~?([^`<]*?)(?:\s*<[^>]*>)?`")
INLINE = re.compile(r"``([^`]*)``|\*\*([^*]+)\*\*|`([^`<]+?)(?:\s*<[^>]*>)?`_{0,2}")
UNDERLINE = re.compile(r"^([=\-~^\"'`#*+.:])\1{2,}\s*$")
DOC_DIRS = ("tutorial", "howto", "faq", "reference", "library", "glossary", "whatsnew")


def rst_to_prose(text: str) -> str:
    """Plain prose from reST: no directives, literal blocks, tables or section underlines."""
    out: list[str] = []
    skip_indent: int | None = None
    for line in text.splitlines():
        stripped = line.strip()
        indent = len(line) - len(line.lstrip())
        if skip_indent is not None:
            if stripped and indent <= skip_indent:
                skip_indent = None
            else:
                continue
        if stripped.startswith(".. ") or stripped.startswith("+--") or stripped.startswith("|"):
            skip_indent = indent
            continue
        if UNDERLINE.match(stripped):
            continue
        if stripped.endswith("::"):
            skip_indent = indent
            stripped = stripped[:-2].rstrip() + ("." if stripped[:-2].strip() else "")
        stripped = ROLE.sub(lambda m: m.group(1).strip(), stripped)
        stripped = INLINE.sub(lambda m: next(g for g in m.groups() if g is not None), stripped)
        out.append(stripped)
    prose = "\n".join(out)
    prose = re.sub(r"\n{3,}", "\n\n", prose)
    return prose.strip()


def natural_language_documents(docs_root: Path) -> list[str]:
    """One document per top-level section of each page, at least 400 characters long."""
    documents = []
    for path in sorted(docs_root.rglob("*.rst.txt")):
        if path.relative_to(docs_root).parts[0] not in DOC_DIRS:
            continue
        prose = rst_to_prose(path.read_text(encoding="utf-8", errors="replace"))
        for section in re.split(r"\n\n(?=[A-Z][^\n]{3,80}\n\n)", prose):
            if len(section) >= 400:
                documents.append(section)
    return documents


def code_documents(stdlib_root: Path) -> list[str]:
    files = sorted(p for p in stdlib_root.glob("*.py") if not p.name.startswith("_"))
    return [p.read_text(encoding="utf-8") for p in files if 2_000 <= p.stat().st_size <= 60_000]


def take(documents: list[str], budget_chars: int, rng: random.Random) -> list[str]:
    documents = documents[:]
    rng.shuffle(documents)
    chosen, total = [], 0
    for doc in documents:
        if total >= budget_chars:
            break
        chosen.append(doc)
        total += len(doc)
    return chosen


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--docs", type=Path, required=True, help="html/_sources of python3.11-doc")
    parser.add_argument("--stdlib", type=Path, required=True, help="CPython 3.11 Lib directory")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "corpus")
    parser.add_argument("--total-mb", type=float, default=3.0)
    args = parser.parse_args(argv)
    rng = random.Random(1234)
    budget = int(args.total_mb * 1_000_000)
    prose = take(natural_language_documents(args.docs), int(0.7 * budget), rng)
    code = take(code_documents(args.stdlib), int(0.3 * budget), rng)
    args.out.mkdir(parents=True, exist_ok=True)
    with gzip.open(args.out / "natural_language.jsonl.gz", "wt", encoding="utf-8", compresslevel=9) as f:
        for doc in prose:
            f.write(json.dumps({"text": doc}) + "\n")
    lines = "".join(json.dumps({"text": doc}) + "\n" for doc in code).encode()
    (args.out / "code.jsonl.zst").write_bytes(zstandard.ZstdCompressor(level=19).compress(lines))
    print(f"natural language: {len(prose)} documents, {sum(map(len, prose)) / 1e6:.2f} M chars")
    print(f"code: {len(code)} documents, {sum(map(len, code)) / 1e6:.2f} M chars")


if __name__ == "__main__":
    main()
