"""Tokenizers: sentencepiece trained here, HF tokenizer.json and HF directory, all offline."""
import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from megatiny.data.tokenizer import HFTokenizer, SentencePieceTokenizer, load_tokenizer, train_sentencepiece
from tests.data.corpus import make_texts

TEXT = "Hello world, the quick brown fox 123 jumps! Ünïcödé and emoji 🙂\ttabs  spaces\nnew line"


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    return train_sentencepiece(make_texts(1500, seed=0), tmp_path_factory.mktemp("spm") / "tok", 400)


def test_sentencepiece_llama_conventions_and_round_trip(spm_model):
    tok = load_tokenizer(spm_model)
    assert isinstance(tok, SentencePieceTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, None)
    ids = tok.encode(TEXT)
    assert ids[0] not in (tok.bos_id,) and ids[-1] != tok.eos_id      # no specials added
    assert tok.decode(ids) == TEXT                                      # byte fallback: lossless
    assert 259 < tok.vocab_size <= 400


def make_hf_tokenizer_json(path, texts):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    tok.save(str(path))
    return path


def test_hf_tokenizer_json(tmp_path):
    path = make_hf_tokenizer_json(tmp_path / "tokenizer.json", make_texts(500, seed=1))
    tok = load_tokenizer(path)
    assert isinstance(tok, HFTokenizer)
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_hf_directory(tmp_path):
    from transformers import PreTrainedTokenizerFast

    raw = make_hf_tokenizer_json(tmp_path / "raw.json", make_texts(500, seed=2))
    fast = PreTrainedTokenizerFast(tokenizer_file=str(raw), bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
    fast.save_pretrained(tmp_path / "hfdir")
    tok = load_tokenizer(tmp_path / "hfdir")
    assert (tok.bos_id, tok.eos_id, tok.pad_id) == (0, 1, 2)
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_missing_and_bad_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nope.model")
    (tmp_path / "bad.model").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.model: not a readable sentencepiece model"):
        load_tokenizer(tmp_path / "bad.model")


def test_split_text_bounds_pieces_and_keeps_every_character():
    from megatiny.data.tokenizer import split_text

    text = "short line\n" + "wörd " * 5000 + "\n" + "x" * 40000 + "\n🙂" * 3000
    pieces = list(split_text(text, 1000))
    assert "".join(pieces) == text
    assert all(0 < len(p.encode()) <= 1000 for p in pieces)
    assert pieces[0] == "short line\n" and pieces[1].endswith("wörd ")          # cut at a space
    assert list(split_text("tiny", 1000)) == ["tiny"]


def test_long_documents_are_trained_on_not_dropped(tmp_path):
    # sentencepiece drops sentences over max_sentence_length bytes; "zqxjv" only occurs in such documents.
    long_docs = [" ".join(["zqxjv"] * 4000)] * 3          # 24 KB each, one line
    model = train_sentencepiece(make_texts(300, seed=3) + long_docs, tmp_path / "tok", 400)
    tok = load_tokenizer(model)
    assert len(tok.encode("zqxjv")) == 1
