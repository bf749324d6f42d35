"""DeepSpeed ZeRO checkpoints -> Hugging Face dirs that transformers loads offline and runs identically."""
import json

import pytest
import sentencepiece as spm
import torch
import transformers
from safetensors import safe_open

from megatiny.checkpoint import export_hf, load_model, open_weights
from megatiny.cli import convert as convert_checkpoint
from megatiny.model.generate import generate
from tests.checkpoint.conftest import sample_texts

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def z3_fp32_export(ds_two_ranks, sp_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "z3-hf"
    code = convert_checkpoint.main(["to-hf", str(ds_two_ranks / "z3"), str(out), "--dtype", "fp32",
                                    "--tokenizer", str(sp_models["bpe"]), "--max-shard-size", "100KB"])
    assert code == 0
    return out


def batch(vocab_size: int) -> torch.Tensor:
    return torch.randint(3, vocab_size, (3, 24), generator=torch.Generator().manual_seed(7))


def test_files_and_config(z3_fp32_export, ds_two_ranks):
    out = z3_fp32_export
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert (config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]) == (8, 2, 8)
    assert config["torch_dtype"] == config["dtype"] == "float32"
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    index = json.loads((out / "model.safetensors.index.json").read_text())
    shards = sorted(p.name for p in out.glob("model-*.safetensors"))
    assert len(shards) > 1 and shards[0] == f"model-00001-of-{len(shards):05d}.safetensors"
    assert sorted(set(index["weight_map"].values())) == shards
    assert {"tokenizer.json", "tokenizer_config.json", "tokenizer.model"} <= {p.name for p in out.iterdir()}
    assert not list(out.parent.glob(".*tmp*"))


def test_transformers_logits_and_greedy_generation_match(z3_fp32_export, ds_two_ranks):
    ours, metadata = load_model(ds_two_ranks / "z3")
    assert metadata["step"] == 3
    theirs = transformers.AutoModelForCausalLM.from_pretrained(z3_fp32_export, dtype=torch.float32)
    x = batch(ours.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), atol=1e-5, rtol=0)
        prompt = x[:, :6]
        expected = theirs.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=12,
                                   do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(generate(ours, prompt, max_new_tokens=12), expected)


def test_tokenizer_loads_offline_and_encodes_like_sentencepiece(z3_fp32_export, sp_models):
    tokenizer = transformers.AutoTokenizer.from_pretrained(z3_fp32_export)
    sp = spm.SentencePieceProcessor(model_file=str(sp_models["bpe"]))
    for text in sample_texts(200, seed=5) + ["", "  leading and trailing  ", "naïve\n\tcafé 2024 🙂"]:
        assert tokenizer.encode(text, add_special_tokens=False) == sp.encode(text), repr(text)
    assert tokenizer.encode("hello")[0] == tokenizer.bos_token_id == 1
    assert tokenizer.eos_token_id == 2


@pytest.mark.parametrize("run", ["z3w3", "z1w2", "z2tw3"])
def test_bf16_export_is_the_rounded_master_weights(ds_runs, tmp_path, run):
    out = export_hf(ds_runs[run], tmp_path / "hf", include_tokenizer=False)  # bf16 by default
    master = open_weights(ds_runs[run])
    config = json.loads((out / "config.json").read_text())
    assert config["torch_dtype"] == "bfloat16" and config["tie_word_embeddings"] == (run == "z2tw3")
    with safe_open(str(out / "model.safetensors"), framework="pt") as f:
        assert sorted(f.keys()) == sorted(master.names())
        for name in master.names():
            assert torch.equal(f.get_tensor(name), master.tensor(name).to(torch.bfloat16)), name
    theirs = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    ours, _ = load_model(out)
    x = batch(ours.config.vocab_size)
    with torch.no_grad():
        torch.testing.assert_close(theirs(x).logits, ours(x), atol=1e-5, rtol=0)
