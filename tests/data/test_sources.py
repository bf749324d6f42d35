"""Input sources: parquet, arrow and save_to_disk folders give the jsonl bytes; sharding; clear errors."""
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatiny.data.preprocess import EmptyOutputError, preprocess
from megatiny.data.sources import InputFile, SourceError, resolve_inputs, shard_files
from megatiny.data.tokenizer import train_sentencepiece
from tests.data.corpus import make_texts
from tools import merge_datasets


@pytest.fixture(scope="module")
def texts_and_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("src")
    texts = make_texts(700, seed=3)
    model = train_sentencepiece(make_texts(1500, seed=0), d / "spm", 500)
    jl = d / "all.jsonl"
    jl.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    preprocess([str(jl)], d / "ref", model, prepend_bos=True, append_eod=True)
    return d, texts, model


def dataset_bytes(prefix) -> tuple[bytes, bytes]:
    return tuple(open(f"{prefix}_text_document.{ext}", "rb").read() for ext in ("bin", "idx"))


def write_parquet(path, texts, **extra_columns):
    table = pa.table({"id": list(range(len(texts))), "text": texts, **extra_columns})
    pq.write_table(table, path, row_group_size=97)     # several row groups, not aligned to chunks


def test_parquet_file_folder_and_glob_equal_jsonl(texts_and_model, tmp_path):
    d, texts, model = texts_and_model
    write_parquet(tmp_path / "one.parquet", texts)
    (tmp_path / "lang").mkdir()
    write_parquet(tmp_path / "lang" / "a.parquet", texts[:300])
    write_parquet(tmp_path / "lang" / "b.parquet", texts[300:])
    for name, inputs in (("file", [tmp_path / "one.parquet"]), ("folder", [tmp_path / "lang"]),
                         ("glob", [tmp_path / "lang" / "*.parquet"])):
        preprocess([str(i) for i in inputs], tmp_path / name, model, prepend_bos=True, append_eod=True)
        assert dataset_bytes(tmp_path / name) == dataset_bytes(d / "ref"), name


def test_save_to_disk_folder_and_arrow_file_equal_jsonl(texts_and_model, tmp_path):
    datasets = pytest.importorskip("datasets")
    d, texts, model = texts_and_model
    ds = datasets.Dataset.from_dict({"content": texts, "n": list(range(len(texts)))})
    ds.save_to_disk(str(tmp_path / "saved"), num_shards=3)
    preprocess([str(tmp_path / "saved")], tmp_path / "hf", model, json_keys=("content",),
               prepend_bos=True, append_eod=True)
    got = [open(f"{tmp_path}/hf_content_document.{e}", "rb").read() for e in ("bin", "idx")]
    assert tuple(got) == dataset_bytes(d / "ref")
    with pa.OSFile(str(tmp_path / "file.arrow"), "wb") as sink:      # Arrow IPC *file* format too
        with pa.ipc.new_file(sink, pa.schema([("text", pa.large_string())])) as w:
            w.write_table(pa.table({"text": pa.array(texts, pa.large_string())}), max_chunksize=200)
    preprocess([str(tmp_path / "file.arrow")], tmp_path / "af", model, prepend_bos=True, append_eod=True)
    assert dataset_bytes(tmp_path / "af") == dataset_bytes(d / "ref")


def test_dataset_dict_folder_asks_for_a_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    one = datasets.Dataset.from_dict({"text": ["a"]})
    datasets.DatasetDict({"train": one}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(SourceError, match=r"DatasetDict with splits \['train'\].*dd/train"):
        resolve_inputs([str(tmp_path / "dd")])


def test_table_errors_name_file_row_and_column(texts_and_model, tmp_path):
    d, texts, model = texts_and_model
    write_parquet(tmp_path / "t.parquet", texts)
    with pytest.raises(SourceError, match=r"t\.parquet: has no column 'content' \(columns: id, text\)"):
        preprocess([str(tmp_path / "t.parquet")], tmp_path / "x", model, json_keys=("content",))
    with pytest.raises(SourceError, match=r"t\.parquet: column 'id' has type int64, not a string"):
        preprocess([str(tmp_path / "t.parquet")], tmp_path / "x", model, json_keys=("id",))
    with_nulls = texts[:200] + [None, ""] + texts[200:400]
    write_parquet(tmp_path / "n.parquet", with_nulls)
    stats = preprocess([str(tmp_path / "n.parquet")], tmp_path / "n", model)
    assert [str(b) for b in stats.bad_examples] == [f"{tmp_path / 'n.parquet'}:row 201: key 'text' is null",
                                                    f"{tmp_path / 'n.parquet'}:row 202: key 'text' is empty"]
    assert stats.documents == 400
    assert not list(tmp_path.glob("x_*"))


def test_shards_are_contiguous_cover_all_files_and_balance_bytes(tmp_path):
    files = []
    for i, size in enumerate([10, 10, 10, 10, 200, 10, 10, 10]):
        (tmp_path / f"f{i}.jsonl").write_bytes(b"x" * size)
        files.append(InputFile(tmp_path / f"f{i}.jsonl", "jsonl"))
    for k in (1, 2, 3, 8):
        parts = [shard_files(files, k, i) for i in range(k)]
        assert [f for p in parts for f in p] == files
    assert [len(shard_files(files, 2, i)) for i in range(2)] == [4, 4]   # the big file sits on the boundary
    assert [len(shard_files(files, 4, i)) for i in range(4)] == [4, 1, 1, 2]
    with pytest.raises(ValueError, match="only 8 file.*at most 8 shards"):
        shard_files(files, 9, 0)
    with pytest.raises(ValueError, match="--shard-index 2 must be in"):
        shard_files(files, 2, 2)


def test_shard_and_merge_equals_one_run(texts_and_model, tmp_path):
    d, texts, model = texts_and_model
    for i in range(5):
        chunk = texts[i * 140:(i + 1) * 140]
        (tmp_path / f"in-{i}.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in chunk))
    pattern = str(tmp_path / "in-*.jsonl")
    preprocess([pattern], tmp_path / "one", model, prepend_bos=True, append_eod=True)
    parts = []
    for i in range(3):
        preprocess([pattern], tmp_path / f"part{i}", model, prepend_bos=True, append_eod=True,
                   num_shards=3, shard_index=i)
        parts.append(str(tmp_path / f"part{i}_text_document"))
    assert merge_datasets.main(["--input", *parts, "--output-prefix", str(tmp_path / "merged")]) == 0
    for ext in ("bin", "idx", "json"):
        one = (tmp_path / f"one_text_document.{ext}").read_bytes()
        assert (tmp_path / f"merged.{ext}").read_bytes() == one
    assert dataset_bytes(tmp_path / "one") == dataset_bytes(d / "ref")


def test_silent_cases_fail_naming_file_and_field(texts_and_model, tmp_path):
    d, texts, model = texts_and_model
    (tmp_path / "empty.jsonl").write_text("")
    with pytest.raises(EmptyOutputError, match=r"empty\.jsonl: no records"):
        preprocess([str(tmp_path / "empty.jsonl")], tmp_path / "e", model)
    (tmp_path / "other.jsonl").write_text("".join(json.dumps({"body": t}) + "\n" for t in texts[:50]))
    with pytest.raises(EmptyOutputError, match=r"other\.jsonl: none of the 50 records has a usable 'text' "
                                               r"field \(.*other\.jsonl:1: missing key 'text'"):
        preprocess([str(tmp_path / "other.jsonl")], tmp_path / "o", model)
    lines = [json.dumps({"text": t}) for t in texts[:97]] + ['{"text": 1}'] * 3
    (tmp_path / "some.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(EmptyOutputError, match=r"3 of 100 records are bad \(3.00% > --max-bad-fraction 0.01\)"
                                               r".*some\.jsonl:98: key 'text' is int"):
        preprocess([str(tmp_path / "some.jsonl")], tmp_path / "s", model)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty.jsonl", "other.jsonl", "some.jsonl"]
    stats = preprocess([str(tmp_path / "some.jsonl")], tmp_path / "s", model, max_bad_fraction=0.05)
    assert stats.documents == 97


def test_line_readers_refuse_tables(tmp_path):
    from megatiny.data.sources import expand_inputs

    write_parquet(tmp_path / "t.parquet", ["a"])
    with pytest.raises(SourceError, match=r"t\.parquet: parquet input is not supported here"):
        expand_inputs([str(tmp_path / "*.parquet")])


def test_a_named_pipe_reads_like_its_file_compressed_or_not(tmp_path):
    """`--input <(zstdcat x.jsonl.zst)`, /dev/stdin: a pipe has no position, yet the records and the
    bytes credited to progress are the file's."""
    import gzip
    import os
    import subprocess

    from megatiny.data.sources import read_chunks

    lines = [json.dumps({"text": f"record {i} " * (i % 7 + 1)}) + "\n" for i in range(3000)]
    for name, data in (("plain.jsonl", "".join(lines).encode()),
                       ("packed.jsonl.gz", gzip.compress("".join(lines).encode()))):
        (tmp_path / name).write_bytes(data)
        fifo = tmp_path / f"pipe_{name}"
        os.mkfifo(fifo)
        writer = subprocess.Popen(["sh", "-c", 'exec cat "$1" >"$2"', "sh", str(tmp_path / name), str(fifo)])
        try:
            chunks = list(read_chunks([InputFile(fifo, "jsonl")]))
        finally:
            writer.wait(timeout=30)
        records = [r.decode() for c in chunks for r in c.records]
        assert records == lines, name
        assert sum(c.disk_bytes for c in chunks) == len(data), name
