"""Preprocessing with a model's own Hugging Face tokenizer directory (tokenizer.json BPE).

A Llama-3-like tokenizer (its post-processor adds <|begin_of_text|> itself) and a Qwen2-like one
(no BOS at all), built locally: one BOS per document with --prepend-bos, never two; a clear error
when --prepend-bos asks for a BOS that does not exist; a model vocabulary padded beyond the
tokenizer's passes the sidecar check.
"""
import json

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from megatiny.data.indexed_dataset import IndexedDataset
from megatiny.data.preprocess import preprocess
from megatiny.data.sidecar import VocabMismatchError, check_model_vocab
from megatiny.data.tokenizer import load_tokenizer
from tests.data.corpus import make_texts

LLAMA3_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]
QWEN2_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]


def bpe_tokenizer_dir(directory, specials, bos, eos, adds_bos: bool):
    """An HF tokenizer directory: byte-level BPE, `bos` (None: none) and `eos` named in its config."""
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(make_texts(300, seed=5), trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    if adds_bos:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos)
    fast.save_pretrained(directory)
    settings = json.loads((directory / "tokenizer_config.json").read_text())
    settings.update({"bos_token": bos, "add_bos_token": adds_bos})
    (directory / "tokenizer_config.json").write_text(json.dumps(settings))
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("model_tokenizers")
    texts = make_texts(40, seed=9) + ["<|begin_of_text|>a document that spells the BOS itself"]
    (root / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in texts))
    return root, texts


def test_llama3_like_tokenizer_gives_exactly_one_bos_per_document(corpus):
    root, texts = corpus
    directory = bpe_tokenizer_dir(root / "llama3", LLAMA3_SPECIALS, "<|begin_of_text|>", "<|end_of_text|>",
                                  adds_bos=True)
    tok = load_tokenizer(directory)
    assert (tok.bos_id, tok.eos_id) == (0, 1)
    preprocess([str(root / "docs.jsonl")], root / "llama3_out", directory, prepend_bos=True, append_eod=True)
    dataset = IndexedDataset(root / "llama3_out_text_document")
    assert dataset.num_documents == len(texts)
    for i in range(dataset.num_documents):
        ids = dataset.get_document(i).tolist()
        assert ids[0] == tok.bos_id and ids.count(tok.bos_id) == 1, i
        assert ids[-1] == tok.eos_id


def test_qwen2_like_tokenizer_has_no_bos_and_prepend_bos_is_a_clear_error(corpus):
    root, texts = corpus
    directory = bpe_tokenizer_dir(root / "qwen2", QWEN2_SPECIALS, None, "<|endoftext|>", adds_bos=False)
    tok = load_tokenizer(directory)
    assert tok.bos_id is None and tok.eos_id == 0
    with pytest.raises(ValueError, match="--prepend-bos given but the tokenizer has no BOS token"):
        preprocess([str(root / "docs.jsonl")], root / "qwen2_bos", directory, prepend_bos=True)
    assert not list(root.glob("qwen2_bos*"))
    preprocess([str(root / "docs.jsonl")], root / "qwen2_out", directory, append_eod=True)
    dataset = IndexedDataset(root / "qwen2_out_text_document")
    first = dataset.get_document(0).tolist()
    assert first[-1] == tok.eos_id and tok.decode(first[:-1]) == texts[0]


def test_sidecar_accepts_a_model_vocabulary_padded_beyond_the_tokenizer(corpus):
    root, _ = corpus
    directory = bpe_tokenizer_dir(root / "padded", QWEN2_SPECIALS, None, "<|endoftext|>", adds_bos=False)
    preprocess([str(root / "docs.jsonl")], root / "padded_out", directory, append_eod=True)
    prefix = str(root / "padded_out_text_document")
    tokenizer_vocab = load_tokenizer(directory).vocab_size
    assert check_model_vocab([prefix], tokenizer_vocab + 271) == []  # Qwen: 151,936 rows, 151,665 tokens
    with pytest.raises(VocabMismatchError, match="model's vocab_size is 10"):
        check_model_vocab([prefix], 10)


def test_a_declared_null_bos_is_not_guessed_from_the_vocabulary(tmp_path):
    """tokenizer_config.json's `bos_token: null` wins over a `<s>` that happens to be in the vocabulary."""
    directory = bpe_tokenizer_dir(tmp_path / "nobos", ["<s>", "</s>"], None, "</s>", adds_bos=False)
    assert load_tokenizer(directory).bos_id is None
    assert load_tokenizer(directory / "tokenizer.json").bos_id == 0  # a bare tokenizer.json: guessed
