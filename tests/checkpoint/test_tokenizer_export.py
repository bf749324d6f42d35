"""Exported tokenizers load with AutoTokenizer offline and encode/decode exactly like sentencepiece."""
import json

import pytest
import sentencepiece as spm
import transformers

from megatiny.checkpoint.tokenizer_export import export_tokenizer
from megatiny.model import get_preset
from tests.checkpoint.conftest import sample_texts

TRICKY = ["", " ", "  two  spaces  ", "\ttab\nnewline\r\n", "naïve café Ünïcödé ßü", "日本語 🙂 €",
          "x" * 300, "(x + 1) 1234567890", "<s> is text here"]


@pytest.mark.parametrize("kind", ["bpe", "unigram"])
def test_encode_and_decode_match_sentencepiece(sp_models, tmp_path, kind):
    export_tokenizer(sp_models[kind], tmp_path, get_preset("tiny-test"))
    tokenizer = transformers.AutoTokenizer.from_pretrained(tmp_path)
    sp = spm.SentencePieceProcessor(model_file=str(sp_models[kind]))
    for text in sample_texts(500, seed=2) + TRICKY[:-1]:
        ids = tokenizer.encode(text, add_special_tokens=False)
        assert ids == sp.encode(text), repr(text)
        assert tokenizer.decode(ids) == sp.decode(ids), repr(text)
    assert tokenizer.encode("hello", add_special_tokens=True)[0] == 1  # BOS, like Llama
    settings = json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert settings["add_bos_token"] is True and settings["add_eos_token"] is False


def test_hf_tokenizer_dir_and_tokenizer_json_are_carried_over(sp_models, tmp_path):
    export_tokenizer(sp_models["bpe"], tmp_path / "a", get_preset("tiny-test"))
    export_tokenizer(tmp_path / "a", tmp_path / "b", get_preset("tiny-test"))
    copied = (tmp_path / "b" / "tokenizer.json").read_bytes()
    assert copied == (tmp_path / "a" / "tokenizer.json").read_bytes()
    export_tokenizer(tmp_path / "a" / "tokenizer.json", tmp_path / "c", get_preset("tiny-test"))
    first = transformers.AutoTokenizer.from_pretrained(tmp_path / "a")
    third = transformers.AutoTokenizer.from_pretrained(tmp_path / "c")
    text = "the quick brown fox 123"
    assert first.encode(text) == third.encode(text)
    assert third.bos_token_id == 1 and third.eos_token_id == 2


def test_special_ids_must_agree_with_the_model(sp_models, tmp_path):
    with pytest.raises(ValueError, match="sentencepiece eos_id is 2 but the model config's eos_token_id"):
        export_tokenizer(sp_models["bpe"], tmp_path, get_preset("tiny-test", eos_token_id=0))
    with pytest.raises(ValueError, match="400 pieces but the model's vocab_size is 256"):
        export_tokenizer(sp_models["bpe"], tmp_path, get_preset("tiny-test", vocab_size=256))
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="bad.model: not a sentencepiece model"):
        export_tokenizer(tmp_path / "bad.model", tmp_path / "x", get_preset("tiny-test"))
