"""Tokenizer files for an exported Hugging Face directory, loadable offline by `AutoTokenizer`.

A sentencepiece `.model` is translated here into an equivalent `tokenizers` pipeline (written as
`tokenizer.json`), so `AutoTokenizer.from_pretrained(out)` needs neither sentencepiece nor a
conversion step at load time, and encodes exactly like `SentencePieceProcessor.encode`:
  model       BPE (merges ranked by the merged piece's score, as sentencepiece merges the
              highest-scoring pair first) or Unigram (same pieces and scores), byte fallback and
              unk as in the model
  normalizer  the model's precompiled normalization map (empty for identity), extra-whitespace
              removal if enabled, spaces -> "▁", and the dummy "▁" prefix if enabled
  decoder     the reverse ("▁" -> space, byte pieces -> bytes, strip the dummy prefix)
The original `tokenizer.model` is copied beside it. Like Llama's tokenizer, encoding with
`add_special_tokens=True` prepends BOS; the megatiny data pipeline adds BOS/EOS itself, so compare
with `add_special_tokens=False`.
An HF tokenizer directory is copied; a bare `tokenizer.json` gets a minimal tokenizer_config.json.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from sentencepiece import sentencepiece_model_pb2
from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE, Unigram

from megatiny.model.config import ModelConfig

HF_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                      "tokenizer.model", "added_tokens.json", "vocab.json", "merges.txt",
                      "chat_template.jinja")

# sentencepiece_model.proto enums
_SP_UNIGRAM, _SP_BPE = 1, 2
_PIECE_NORMAL, _PIECE_UNKNOWN, _PIECE_CONTROL, _PIECE_USER, _PIECE_UNUSED, _PIECE_BYTE = range(1, 7)


def has_tokenizer_files(directory: Path) -> bool:
    return any((directory / name).is_file() for name in ("tokenizer.json", "tokenizer.model"))


def export_tokenizer(tokenizer: Path, out_dir: Path, config: ModelConfig) -> None:
    """Write the tokenizer files for `tokenizer` (sp `.model`, HF dir, or tokenizer.json) into out_dir."""
    tokenizer = Path(tokenizer)
    if tokenizer.is_dir():
        if not has_tokenizer_files(tokenizer):
            raise FileNotFoundError(f"{tokenizer}: no tokenizer.json or tokenizer.model in this directory")
        copy_hf_tokenizer_files(tokenizer, out_dir)
    elif tokenizer.name.endswith(".json"):
        _export_tokenizer_json(tokenizer, out_dir, config)
    else:
        _export_sentencepiece(tokenizer, out_dir, config)


def copy_hf_tokenizer_files(src: Path, dst: Path) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    for name in HF_TOKENIZER_FILES:
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)


def _export_tokenizer_json(path: Path, out_dir: Path, config: ModelConfig) -> None:
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as e:
        raise ValueError(f"{path}: not a valid tokenizers JSON file ({e})") from None
    bos = tok.id_to_token(config.bos_token_id) if config.bos_token_id is not None else None
    _save_fast(tok, out_dir, config, bos=bos, eos=tok.id_to_token(config.document_eos_token_id), unk=None)


def _export_sentencepiece(path: Path, out_dir: Path, config: ModelConfig) -> None:
    proto = _read_sp_proto(path)
    spec = proto.trainer_spec
    pieces = list(proto.pieces)
    for field, sp_id, model_id in (("bos", spec.bos_id, config.bos_token_id),
                                   ("eos", spec.eos_id, config.document_eos_token_id)):
        if sp_id >= 0 and sp_id != model_id:
            raise ValueError(f"{path}: sentencepiece {field}_id is {sp_id} but the model config's "
                             f"{field}_token_id is {model_id}; train with a matching config")
    if len(pieces) > config.vocab_size:
        raise ValueError(f"{path}: {len(pieces)} pieces but the model's vocab_size is {config.vocab_size}")
    tok = _sp_to_tokenizers(proto, path)
    piece = lambda i: pieces[i].piece if 0 <= i < len(pieces) else None  # noqa: E731
    _save_fast(tok, out_dir, config, bos=piece(spec.bos_id), eos=piece(spec.eos_id),
               unk=piece(spec.unk_id))
    shutil.copy2(path, out_dir / "tokenizer.model")


def _read_sp_proto(path: Path):
    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString(path.read_bytes())
    except Exception as e:
        raise ValueError(f"{path}: not a sentencepiece model ({e}); expected a .model file, an HF "
                         f"tokenizer directory or a tokenizer.json") from None
    if not proto.pieces:
        raise ValueError(f"{path}: sentencepiece model has no pieces")
    return proto


def _sp_to_tokenizers(proto, path: Path):
    """An equivalent `tokenizers.Tokenizer` for a sentencepiece BPE or Unigram model proto."""
    spec, norm = proto.trainer_spec, proto.normalizer_spec
    pieces = list(proto.pieces)
    unk_piece = pieces[spec.unk_id].piece if spec.unk_id >= 0 else None
    if spec.model_type == _SP_BPE:
        vocab = {p.piece: i for i, p in enumerate(pieces)}
        model = BPE(vocab=vocab, merges=_bpe_merges(pieces), unk_token=unk_piece, fuse_unk=True,
                    byte_fallback=spec.byte_fallback)
    elif spec.model_type == _SP_UNIGRAM:
        model = Unigram([(p.piece, p.score) for p in pieces], spec.unk_id, spec.byte_fallback)
    else:
        raise ValueError(f"{path}: sentencepiece model_type {spec.model_type} is not supported "
                         f"(only BPE and Unigram)")
    if not norm.escape_whitespaces:
        raise ValueError(f"{path}: sentencepiece escape_whitespaces=false is not supported")
    tok = Tokenizer(model)
    steps = []
    if norm.precompiled_charsmap:
        steps.append(normalizers.Precompiled(norm.precompiled_charsmap))
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Replace(Regex(r"^ +| +$"), ""), normalizers.Replace(Regex(r" {2,}"), " ")]
    if norm.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tok.normalizer = normalizers.Sequence(steps)
    user_defined = [p.piece for p in pieces if p.type == _PIECE_USER]
    if user_defined:  # sentencepiece never splits or merges user-defined pieces
        tok.pre_tokenizer = pre_tokenizers.Split(
            Regex("|".join(re.escape(s) for s in sorted(user_defined, key=len, reverse=True))),
            behavior="isolated")
    tok.add_special_tokens([AddedToken(p.piece, special=True, normalized=False)
                            for p in pieces if p.type == _PIECE_CONTROL])
    decode = [decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()]
    if norm.add_dummy_prefix:
        decode.append(decoders.Strip(" ", 1, 0))
    tok.decoder = decoders.Sequence(decode)
    return tok


def _bpe_merges(pieces) -> list[tuple[str, str]]:
    """Sentencepiece BPE merges the adjacent pair whose concatenation is the highest-scoring piece;
    as ranked merges: every split (left, right) of a normal piece into two known pieces, ordered by
    the merged piece's score (then id)."""
    index = {p.piece: i for i, p in enumerate(pieces)}
    ranked = []
    for i, p in enumerate(pieces):
        if p.type != _PIECE_NORMAL:
            continue
        for cut in range(1, len(p.piece)):
            left, right = p.piece[:cut], p.piece[cut:]
            if left in index and right in index:
                ranked.append((-p.score, i, index[left], left, right))
    ranked.sort()
    return [(left, right) for *_, left, right in ranked]


def _save_fast(tok, out_dir: Path, config: ModelConfig, bos: str | None, eos: str | None,
               unk: str | None) -> None:
    """Save `tok` as a PreTrainedTokenizerFast (tokenizer.json + configs), BOS prepended like Llama."""
    # Here, not at the top: transformers takes over a second to import, and every training rank
    # imports this package (megatiny.checkpoint) without needing it.
    from transformers import PreTrainedTokenizerFast

    if bos is not None:
        tok.post_processor = processors.TemplateProcessing(
            single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, config.bos_token_id)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, unk_token=unk,
                                   model_max_length=config.max_position_embeddings,
                                   clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(out_dir))
    config_path = out_dir / "tokenizer_config.json"
    settings = json.loads(config_path.read_text())
    settings.update({"add_bos_token": bos is not None, "add_eos_token": False})
    config_path.write_text(json.dumps(settings, indent=2, sort_keys=True) + "\n")
