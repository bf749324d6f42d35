"""tools/preprocess_data.py and friends on a generated corpus with tokenizers trained here."""
import gzip
import json
import sys

import numpy as np
import pytest
import zstandard

from megatiny.cli import inspect as inspect_dataset
from megatiny.cli import merge as merge_datasets
from megatiny.cli import preprocess as preprocess_tool
from megatiny.cli import train_tokenizer
from megatiny.data.indexed_dataset import IndexedDataset
from megatiny.data.preprocess import BadLineError, preprocess
from megatiny.data.sources import iter_texts
from megatiny.data.tokenizer import load_tokenizer, train_sentencepiece
from tests.data.corpus import make_texts
from tests.data.test_tokenizer import make_hf_tokenizer_json
from tests.helpers import REPO_ROOT, run_command, timeout_s

BAD_LINES = {  # line number (1-based) -> (raw line, reason fragment)
    5: (b'{"text": "unterminated\n', "invalid JSON"),
    9: (b'{"title": "no text key"}\n', "missing key 'text'"),
    14: (b'{"text": 42}\n', "is int, not a string"),
    20: (b'{"text": "bad \xff\xfe utf8"}\n', "invalid UTF-8"),
    27: (b'{"text": ""}\n', "is empty"),
    33: (b'[1, 2]\n', "not a JSON object"),
}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    d = tmp_path_factory.mktemp("pre")
    texts = make_texts(1200, seed=7)
    lines, good = [], []
    for t in texts:
        lineno = len(lines) + 1
        while lineno in BAD_LINES:
            lines.append(BAD_LINES[lineno][0])
            lineno += 1
        lines.append(json.dumps({"text": t, "meta": {"n": lineno}}).encode() + b"\n")
        good.append(t)
    raw = b"".join(lines)
    (d / "c.jsonl").write_bytes(raw)
    (d / "c.jsonl.gz").write_bytes(gzip.compress(raw))
    (d / "c.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(raw))
    model = train_sentencepiece(make_texts(1500, seed=0), d / "spm", 500)
    return d, good, model


@pytest.fixture(scope="module")
def processed(corpus):
    d, good, model = corpus
    out = {}
    for workers in (1, 2):
        out[workers] = preprocess([str(d / "c.jsonl")], d / f"w{workers}", model, workers=workers,
                                  prepend_bos=True, append_eod=True)
    return out


def test_documents_decode_to_input_with_bos_eos(corpus, processed):
    d, good, model = corpus
    tok = load_tokenizer(model)
    ds = IndexedDataset(d / "w1_text_document")
    assert ds.dtype == np.uint16 and ds.num_documents == len(good)
    for i in (0, 1, 17, len(good) - 1):
        ids = ds.get_document(i).tolist()
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
        assert ids.count(tok.bos_id) == 1 and ids.count(tok.eos_id) == 1
        assert tok.decode(ids[1:-1]) == good[i]
    assert processed[1].documents == len(good) and processed[1].tokens == ds.num_tokens


def test_bad_lines_reported_with_line_numbers(corpus, processed):
    d, _, _ = corpus
    stats = processed[1]
    assert stats.bad_lines == len(BAD_LINES)
    got = {b.line: b.reason for b in stats.bad_examples}
    assert set(got) == set(BAD_LINES)
    for line, (_, fragment) in BAD_LINES.items():
        assert fragment in got[line], (line, got[line])
    assert all(b.file.endswith("c.jsonl") for b in stats.bad_examples)


def test_worker_count_does_not_change_bytes(corpus, processed):
    d, _, _ = corpus
    for ext in ("bin", "idx"):
        assert (d / f"w1_text_document.{ext}").read_bytes() == (d / f"w2_text_document.{ext}").read_bytes()
    assert processed[2].bad_lines == processed[1].bad_lines


@pytest.mark.parametrize("ext", ["gz", "zst"])
def test_compressed_inputs(corpus, processed, ext):
    d, _, model = corpus
    preprocess([str(d / f"c.jsonl.{ext}")], d / f"z{ext}", model, prepend_bos=True, append_eod=True)
    for suffix in ("bin", "idx"):
        assert (d / f"z{ext}_text_document.{suffix}").read_bytes() == \
            (d / f"w1_text_document.{suffix}").read_bytes()


@pytest.mark.parametrize("workers", [1, 2])
def test_strict_stops_at_first_bad_line_and_writes_nothing(corpus, workers):
    d, _, model = corpus
    with pytest.raises(BadLineError, match=r"c\.jsonl:5: invalid JSON"):
        preprocess([str(d / "c.jsonl")], d / "strict", model, strict=True, workers=workers)
    assert not list(d.glob("strict*"))
    assert not list(d.glob(".strict*"))


def test_hf_tokenizer_json_and_glob(corpus, tmp_path):
    d, good, _ = corpus
    tj = make_hf_tokenizer_json(tmp_path / "tokenizer.json", good[:300])
    stats = preprocess([str(d / "c.json*l")], tmp_path / "hf", tj, append_eod=True)
    tok = load_tokenizer(tj)
    ds = IndexedDataset(tmp_path / "hf_text_document")
    assert stats.documents == len(good) and ds.num_documents == len(good)
    ids = ds.get_document(3).tolist()
    assert ids[-1] == tok.eos_id and tok.decode(ids[:-1]) == good[3]


def test_multiple_json_keys(tmp_path, corpus):
    _, _, model = corpus
    src = tmp_path / "two.jsonl"
    src.write_text("\n".join(json.dumps({"text": f"body {i}", "title": f"title {i}"}) for i in range(20)))
    preprocess([str(src)], tmp_path / "o", model, json_keys=("text", "title"))
    tok = load_tokenizer(model)
    assert tok.decode(IndexedDataset(tmp_path / "o_title_document")[7].tolist()) == "title 7"
    assert tok.decode(IndexedDataset(tmp_path / "o_text_document")[7].tolist()) == "body 7"


def test_cli_tools_end_to_end(corpus, processed, tmp_path, capsys):
    d, good, model = corpus
    jl = tmp_path / "small.jsonl"
    jl.write_text("\n".join(json.dumps({"text": t}) for t in good[:400]) + "\n")
    assert train_tokenizer.main(["--input", str(jl), "--output-prefix", str(tmp_path / "tok"),
                                 "--vocab-size", "400"]) == 0
    assert preprocess_tool.main(["--input", str(jl), "--output-prefix", str(tmp_path / "a"), "--tokenizer",
                                 str(tmp_path / "tok.model"), "--append-eod", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "done: 400 documents" in out
    a = str(tmp_path / "a_text_document")
    assert merge_datasets.main(["--input", a, a, "--output-prefix", str(tmp_path / "aa")]) == 0
    assert IndexedDataset(tmp_path / "aa").num_documents == 800
    capsys.readouterr()
    assert inspect_dataset.main([str(tmp_path / "aa"), "--tokenizer", str(tmp_path / "tok.model"),
                                 "--document", "401"]) == 0
    out = capsys.readouterr().out
    assert "documents: 800" in out and good[1] in out
    scan = [str(tmp_path / "aa"), "--scan", "--tokenizer"]
    assert inspect_dataset.main(scan + [str(tmp_path / "tok.model")]) == 0
    assert "max_token_id" in capsys.readouterr().out
    tiny = make_hf_tokenizer_json(tmp_path / "tiny.json", ["ab"])      # far smaller vocabulary
    assert inspect_dataset.main(scan + [str(tiny)]) == 1
    assert "different tokenizer" in capsys.readouterr().err
    assert preprocess_tool.main(["--input", str(tmp_path / "missing*.jsonl"), "--output-prefix", "x",
                                 "--tokenizer", str(model)]) == 1
    assert "matches no file" in capsys.readouterr().err


def test_preprocess_script_runs_as_a_command(corpus, tmp_path):
    d, _, model = corpus
    r = run_command([".venv/bin/python" if (REPO_ROOT / ".venv/bin/python").exists() else "python",
                     "tools/preprocess_data.py", "--input", str(d / "c.jsonl"), "--output-prefix",
                     str(tmp_path / "cli"), "--tokenizer", str(model), "--workers", "2", "--append-eod",
                     "--prepend-bos", "--no-progress", "--bad-lines-file", str(tmp_path / "bad.txt")],
                    timeout=timeout_s(extra_s=60), env={"PYTHONPATH": str(REPO_ROOT)})
    assert r.returncode == 0, r.stdout
    assert "skipped 6 bad lines" in r.stdout and "c.jsonl:20: invalid UTF-8" in r.stdout
    assert (tmp_path / "cli_text_document.bin").read_bytes() == (d / "w1_text_document.bin").read_bytes()
    logged = (tmp_path / "bad.txt").read_text().splitlines()
    assert [int(x.split(":")[1]) for x in logged] == sorted(BAD_LINES)


def test_train_tokenizer_inputs_use_the_preprocess_parser_and_close_their_files(corpus):
    import gc
    import warnings

    from megatiny.data.preprocess import open_binary

    d, good, _ = corpus
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for ext in ("gz", "zst"):
            with open_binary(d / f"c.jsonl.{ext}") as f:
                assert f.readline()
            del f
            gc.collect()
    # The file open_binary opened is closed with the stream, not left to the garbage collector.
    assert not [w for w in caught if issubclass(w.category, ResourceWarning)]
    bad: list[str] = []
    texts = list(iter_texts([str(d / "c.jsonl.gz")], "text", None, bad))
    assert texts == good
    assert [int(b.split(":")[1]) for b in bad] == sorted(BAD_LINES)
    assert "c.jsonl.gz:20: invalid UTF-8" in bad[3]


def test_failure_creating_an_output_leaves_no_temporary_files(corpus, tmp_path):
    d, _, model = corpus
    (tmp_path / "o_x").write_text("a file where the second output's directory would go")
    with pytest.raises(OSError):
        preprocess([str(d / "c.jsonl")], tmp_path / "o", model, json_keys=("text", "x/y"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o_x"]    # no .o_text_document.tmp-* left


def test_megatron_deepspeed_command_runs_unchanged(corpus, processed, tmp_path):
    """A Megatron-DeepSpeed preprocessing command line, flags as its README writes them."""
    d, _, model = corpus
    cmd = [sys.executable, "tools/preprocess_data.py", "--input", str(d / "c.jsonl"),
           "--output-prefix", str(tmp_path / "meg"), "--tokenizer-type", "Llama2Tokenizer",
           "--tokenizer-model", str(model), "--json-keys", "text", "--append-eod", "--workers", "2",
           "--partitions", "2", "--dataset-impl", "mmap", "--log-interval", "1000", "--chunk-size", "25",
           "--keep-sequential-samples"]
    r = run_command(cmd, timeout=timeout_s(extra_s=30), env={"PYTHONPATH": str(REPO_ROOT)})
    assert r.returncode == 0, r.stdout
    assert "--partitions 2 ignored" in r.stdout and "starts with BOS" in r.stdout
    for ext in ("bin", "idx"):      # Llama2Tokenizer adds BOS, as Megatron's does: same as --prepend-bos
        assert (tmp_path / f"meg_text_document.{ext}").read_bytes() == \
            (d / f"w1_text_document.{ext}").read_bytes()
    wrong = run_command(cmd[:6] + ["--tokenizer-type", "HuggingFaceTokenizer", "--tokenizer-model",
                                   str(model)], timeout=timeout_s(), env={"PYTHONPATH": str(REPO_ROOT)})
    assert wrong.returncode == 1 and "does not match" in wrong.stdout
    assert "sentencepiece model" in wrong.stdout
    split = run_command(cmd + ["--split-sentences"], timeout=timeout_s(), env={"PYTHONPATH": str(REPO_ROOT)})
    assert split.returncode == 1 and "--split-sentences is not supported" in split.stdout


def test_sidecar_records_tokenizer_counts_and_sources(corpus, processed):
    from megatiny.data.sidecar import DatasetSidecar
    from megatiny.data.tokenizer import tokenizer_fingerprint

    d, good, model = corpus
    meta = DatasetSidecar.read(d / "w1_text_document")
    ds = IndexedDataset(d / "w1_text_document")
    assert meta.tokenizer == tokenizer_fingerprint(load_tokenizer(model))
    assert meta.tokenizer["vocab_size"] == 500 and len(meta.tokenizer["sha256"]) == 64
    assert (meta.num_documents, meta.num_tokens) == (ds.num_documents, ds.num_tokens)
    assert meta.max_token_id == int(ds.tokens.max()) and meta.dtype == "uint16"
    assert meta.sources == [str((d / "c.jsonl").resolve())] and meta.prepend_bos and meta.append_eod


def test_megatron_huggingface_tokenizer_type(corpus, tmp_path, capsys):
    d, good, _ = corpus
    tj = make_hf_tokenizer_json(tmp_path / "tokenizer.json", good[:300])
    args = ["--input", str(d / "c.jsonl"), "--output-prefix", str(tmp_path / "hf"), "--tokenizer-model",
            str(tj), "--append-eod", "--no-progress"]
    assert preprocess_tool.main(args + ["--tokenizer-type", "HuggingFaceTokenizer"]) == 0
    assert preprocess_tool.main(args + ["--tokenizer-type", "GPTSentencePieceTokenizer"]) == 1
    assert "is a Hugging Face tokenizer" in capsys.readouterr().err
