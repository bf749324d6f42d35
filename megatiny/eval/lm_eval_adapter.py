"""lm-evaluation-harness model `megatiny`: score any megatiny checkpoint with lm-eval's tasks.

    lm_eval needs our class registered before it parses `--model megatiny`; importing this module
    does that. From the shell use the wrapper, which registers and then runs lm-eval's own CLI:

        python -m megatiny.eval --model megatiny --model_args checkpoint=runs/x/checkpoints \\
            --tasks arc_easy --batch_size 16

    From Python: `MegatinyLM(checkpoint=...)` or `MegatinyLM(model=gpt, tokenizer=tok)`, then
    `lm_eval.simple_evaluate(model=lm, tasks=[...])`.

Scoring follows lm-eval's `hf` model for causal LMs, so a megatiny checkpoint and its Hugging Face
export get the same numbers: the context is encoded with BOS in front (as Llama tokenizers do;
`add_bos_token=False` turns that off), a continuation's tokens are those of
encode(context + continuation) after encode(context), inputs longer than the model's context are
cut from the left. Requests are sorted by length (longest first), right-padded and scored one
forward pass per batch; right padding cannot change the logits of a causal model at real positions.
Requests with identical model inputs (single-token choices of one question) share a forward row.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from lm_eval import utils as lm_utils
from lm_eval.api.instance import Instance
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import normalize_gen_kwargs
from tqdm import tqdm

from megatiny.checkpoint import load_model
from megatiny.data.tokenizer import load_tokenizer
from megatiny.model import GPT, ModelRuntime
from megatiny.model.generate import generate
from megatiny.parsing import parse_bool
from megatiny.precision import resolve_device, resolve_dtype

logger = logging.getLogger(__name__)

# A loglikelihood request after tokenization: ((context, continuation) or None, context ids,
# continuation ids). Rolling-window requests carry None as the first element (nothing to cache).
TokenRequest = tuple[Any, list[int], list[int]]




def _parse_batch_size(value: Any) -> int:
    if value is None:
        return 8
    text = str(value)
    if text.startswith("auto"):
        logger.warning("megatiny lm-eval model: batch_size=%s is not supported; using 8 "
                       "(pass an integer, e.g. --batch_size 32)", text)
        return 8
    try:
        size = int(text)
    except ValueError:
        raise ValueError(f"megatiny lm-eval model: batch_size must be an integer, got {value!r}") from None
    if size <= 0:
        raise ValueError(f"megatiny lm-eval model: batch_size must be positive, got {size}")
    return size


def load_checkpoint_and_tokenizer(checkpoint: str | os.PathLike, tokenizer: Any, dtype: torch.dtype,
                                  device: torch.device, runtime: ModelRuntime | None = None,
                                  ) -> tuple[torch.nn.Module, Any, dict]:
    """(model in eval mode, tokenizer object, metadata) for a checkpoint `load_model` accepts.

    The tokenizer is `tokenizer` (a path or a loaded object) if given, else the one named in the
    checkpoint's metadata, else the checkpoint directory itself (a Hugging Face export keeps its
    tokenizer files beside the weights). `runtime`: as in `load_model` (e.g. compiled blocks).
    """
    model, metadata = load_model(checkpoint, dtype=dtype, device=device, runtime=runtime)
    if tokenizer is None:
        tokenizer = metadata.get("tokenizer") or checkpoint
    if isinstance(tokenizer, (str, os.PathLike)):
        try:
            tokenizer = load_tokenizer(tokenizer)
        except (OSError, ValueError) as e:
            raise ValueError(
                f"megatiny lm-eval model: cannot load the tokenizer for {checkpoint} from "
                f"{tokenizer}: {e}. Pass tokenizer=PATH (a sentencepiece .model file or a Hugging "
                f"Face tokenizer directory) in --model_args.") from None
    return model.eval(), tokenizer, metadata


def _runtime(compile: bool | str, backend: str) -> ModelRuntime:
    """The ModelRuntime of the `compile` and `compile_backend` model arguments."""
    try:
        return ModelRuntime(compile=bool(parse_bool(compile, "megatiny lm-eval model: compile")),
                            compile_backend=backend)
    except ValueError as e:
        raise ValueError(f"megatiny lm-eval model: {e}") from None


@register_model("megatiny")
class MegatinyLM(TemplateLM):
    """lm-eval `LM` over a megatiny `GPT` (or any causal LM module returning logits [B, T, V]).

    Args (all also accepted as `--model_args key=value`):
        checkpoint: DeepSpeed checkpoint root or tag dir, megatiny weights dir or HF Llama dir.
        model, tokenizer: instead of `checkpoint`, an in-memory model and tokenizer (Python only);
            with `checkpoint`, `tokenizer` may be a path overriding the checkpoint's own.
        batch_size: requests per forward pass (integer).
        max_length: context length in tokens (default: the model's max_position_embeddings).
        device: "cpu", "cuda", "cuda:1", ... (default: CUDA if available).
        dtype: float32 | bfloat16 | float16 | auto (what `precision: auto` picks on the device:
            bf16 on GPUs and CPUs with native bf16, fp16 on older GPUs, fp32 on other CPUs).
        add_bos_token: put BOS before every context (default: true when the tokenizer has one).
        max_gen_toks: default generation budget when a task does not set one.
        seed: seed of the sampling generator (only used when a task samples).
        compile: torch.compile each transformer block of the checkpoint's model (default false).
        compile_backend: inductor (default) | aot_eager, as `runtime.compile_backend` in training.
    """

    backend = "causal"

    def __init__(self, checkpoint: str | None = None, *, model: torch.nn.Module | None = None,
                 tokenizer: Any = None, batch_size: int | str | None = 8,
                 max_length: int | str | None = None, device: str | None = None,
                 dtype: str | torch.dtype = "auto", add_bos_token: bool | str | None = None,
                 max_gen_toks: int | str = 256, seed: int | str = 1234, compile: bool | str = False,
                 compile_backend: str = "inductor", max_batch_size: int | None = None,
                 **unknown: Any) -> None:
        super().__init__()
        del max_batch_size  # lm-eval passes it to every model; only "auto" batch sizes use it
        if unknown:
            raise ValueError(f"megatiny lm-eval model: unknown argument(s) {sorted(unknown)}; known: "
                             "checkpoint, tokenizer, batch_size, max_length, device, dtype, "
                             "add_bos_token, max_gen_toks, seed, compile, compile_backend")
        self._device = resolve_device(device)
        if (checkpoint is None) == (model is None):
            raise ValueError("megatiny lm-eval model: give exactly one of checkpoint=PATH or "
                             "model=<nn.Module> (with tokenizer=...)")
        if checkpoint is not None:
            try:
                torch_dtype = resolve_dtype(dtype, self._device)
            except ValueError as e:
                raise ValueError(f"megatiny lm-eval model: {e} (or 'auto')") from None
            model, tokenizer, self.metadata = load_checkpoint_and_tokenizer(
                checkpoint, tokenizer, torch_dtype, self._device, _runtime(compile, compile_backend))
        else:
            if tokenizer is None:
                raise ValueError("megatiny lm-eval model: an in-memory model needs tokenizer=...")
            self.metadata = {}
            model = model.to(self._device).eval()
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = _parse_batch_size(batch_size)
        self._max_length = self._resolve_max_length(max_length)
        self._max_gen_toks = int(max_gen_toks)
        bos = getattr(tokenizer, "bos_id", None)
        # lm-eval passes `--model_args` values as strings or already-parsed Python values.
        add_bos = parse_bool(add_bos_token, "megatiny lm-eval model: add_bos_token")
        self.add_bos_token = (bos is not None) if add_bos is None else add_bos
        if self.add_bos_token and bos is None:
            raise ValueError("megatiny lm-eval model: add_bos_token=true but the tokenizer has no BOS")
        self._generator = torch.Generator(device="cpu").manual_seed(int(seed))

    def _resolve_max_length(self, max_length: int | str | None) -> int:
        """`max_length` if given (at most the model's positions), else the model's context length."""
        limit = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        if max_length is None:
            if limit is None:
                raise ValueError("megatiny lm-eval model: cannot tell the model's context length; "
                                 "pass max_length=N")
            return int(limit)
        value = int(max_length)
        if value <= 0 or (limit is not None and value > limit):
            raise ValueError(f"megatiny lm-eval model: max_length {value} must be in 1..{limit} "
                             f"(the model's max_position_embeddings)")
        return value

    # --- lm-eval's tokenization hooks -------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    @property
    def prefix_token_id(self) -> int:
        """Conditioning token for an empty context and for rolling windows: BOS, else EOS."""
        bos = getattr(self.tokenizer, "bos_id", None)
        return bos if bos is not None else self.tokenizer.eos_id

    @property
    def max_length(self) -> int:
        return self._max_length

    @property
    def max_gen_toks(self) -> int:
        return self._max_gen_toks

    @property
    def tokenizer_name(self) -> str:
        return str(getattr(self.tokenizer, "path", type(self.tokenizer).__name__))

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        """Token ids of `string`; BOS in front when `add_special_tokens` (default: add_bos_token)."""
        add_bos = self.add_bos_token if add_special_tokens is None else add_special_tokens
        ids = list(self.tokenizer.encode(string))
        return [self.tokenizer.bos_id, *ids] if add_bos and self.tokenizer.bos_id is not None else ids

    def tok_decode(self, ids: Iterable[int]) -> str:
        return self.tokenizer.decode(list(ids))

    # --- scoring ---------------------------------------------------------------------------

    @torch.no_grad()
    def _logits(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Float32 logits [B, T, V] for Long[B, T] input ids (moved to the model's device)."""
        output = self.model(input_ids.to(self._device))
        logits = output.logits if hasattr(output, "logits") else output
        return logits.float()

    def _loglikelihood_tokens(self, requests: list[TokenRequest], disable_tqdm: bool = False,
                              **kwargs) -> list[tuple[float, bool]]:
        """(sum of log p(continuation tokens), whether greedy decoding reproduces them) per request.

        The model sees (context + continuation)[-(max_length + 1):][:-1]; the last
        len(continuation) positions score the continuation. Requests with the same model input
        (typically the choices of one question that are a single token each) share one row of
        the batch; a batch holds `batch_size` distinct inputs, longest first.
        """
        owners: dict[tuple[int, ...], list[int]] = {}
        for index, (_, context, continuation) in enumerate(requests):
            owners.setdefault(tuple(self._model_input(context, continuation)), []).append(index)
        inputs = sorted(owners, key=lambda ids: (-len(ids), ids))
        results: list[tuple[float, bool] | None] = [None] * len(requests)
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                        desc="megatiny loglikelihood")
        for start in range(0, len(inputs), self.batch_size):
            batch = inputs[start:start + self.batch_size]
            spans = [max(len(requests[i][2]) for i in owners[ids]) for ids in batch]
            for ids, logprobs in zip(batch, self._span_logprobs(batch, spans)):
                for index in owners[ids]:
                    continuation = requests[index][2]
                    rows = logprobs[logprobs.shape[0] - len(continuation):]  # [C, V]
                    target = torch.tensor(continuation, dtype=torch.long, device=rows.device)
                    answer = (float(rows.gather(1, target[:, None]).sum()),
                              bool((rows.argmax(dim=-1) == target).all()))
                    results[index] = answer
                    if requests[index][0] is not None:
                        self.cache_hook.add_partial("loglikelihood", requests[index][0], answer)
                progress.update(len(owners[ids]))
        progress.close()
        return results  # type: ignore[return-value]

    def _model_input(self, context: list[int], continuation: list[int]) -> list[int]:
        if not context or not continuation:
            raise ValueError("megatiny lm-eval model: empty context or continuation token list")
        if len(continuation) > self.max_length:
            raise ValueError(f"megatiny lm-eval model: continuation of {len(continuation)} tokens "
                             f"exceeds max_length {self.max_length}")
        return (context + continuation)[-(self.max_length + 1):][:-1]

    @torch.no_grad()
    def _span_logprobs(self, inputs: Sequence[tuple[int, ...]], spans: list[int]) -> list[torch.Tensor]:
        """fp32 log-probabilities [span, V] at the last `span` positions of each input.

        One right-padded forward for the batch. For a megatiny GPT the output projection is applied
        only at those positions (with a small model and a 32k vocabulary it is most of the work).
        """
        width = max(len(ids) for ids in inputs)
        padded = torch.zeros(len(inputs), width, dtype=torch.long)
        for row, ids in enumerate(inputs):
            padded[row, :len(ids)] = torch.tensor(ids, dtype=torch.long)
        padded = padded.to(self._device)
        if isinstance(self.model, GPT):
            rows = [row for row, span in enumerate(spans) for _ in range(span)]
            positions = [p for ids, span in zip(inputs, spans) for p in range(len(ids) - span, len(ids))]
            logprobs = self.model.next_token_log_probs(  # [sum(spans), V]
                padded, torch.tensor(rows, device=self._device), torch.tensor(positions, device=self._device))
            return list(logprobs.split(spans))
        logits = self._logits(padded)
        return [F.log_softmax(logits[row, len(ids) - span:len(ids)], dim=-1)
                for row, (ids, span) in enumerate(zip(inputs, spans))]

    def loglikelihood_rolling(self, requests: list[Instance], disable_tqdm: bool = False) -> list[float]:
        """Total log-likelihood of each string, conditioned on the prefix token (BOS).

        Documents longer than max_length are cut into windows (lm-eval's rolling scheme: every
        token scored exactly once, each window with as much preceding context as fits). The
        string is encoded without BOS: BOS is the conditioning token, not a token to predict.
        """
        windows: list[TokenRequest] = []
        owners: list[int] = []
        for index, (string,) in enumerate(request.args for request in requests):
            token_windows = lm_utils.get_rolling_token_windows(
                token_list=self.tok_encode(string, add_special_tokens=False),
                prefix_token=self.prefix_token_id, max_seq_len=self.max_length, context_len=1)
            for context, continuation in map(lm_utils.make_disjoint_window, token_windows):
                windows.append((None, context, continuation))
                owners.append(index)
        totals = [0.0] * len(requests)
        for owner, (logprob, _) in zip(owners, self._loglikelihood_tokens(windows, disable_tqdm)):
            totals[owner] += logprob
        for request, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", request.args, total)
        return totals

    # --- generation ------------------------------------------------------------------------

    def generate_until(self, requests: list[Instance], disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, if the task asks) continuations, cut at the first stop sequence.

        Requests with the same generation settings are sorted longest first and batched; a batch
        holds prompts of one length (see `generate_tokens`).
        """
        results: list[str | None] = [None] * len(requests)
        groups: dict[str, list[int]] = {}
        for index, request in enumerate(requests):
            groups.setdefault(repr(sorted(request.args[1].items())), []).append(index)
        progress = tqdm(total=len(requests), disable=disable_tqdm or self.rank != 0,
                        desc="megatiny generate_until")
        for indices in groups.values():
            kwargs = normalize_gen_kwargs(requests[indices[0]].args[1], self.max_gen_toks)
            until = [s for s in kwargs["until"] if s]
            max_new = int(kwargs["max_gen_toks"])
            temperature = float(kwargs.get("temperature", 0.0)) if kwargs.get("do_sample") else 0.0
            sampling = {"temperature": temperature, "top_k": kwargs.get("top_k"),
                        "top_p": kwargs.get("top_p")}
            if max_new >= self.max_length:
                raise ValueError(f"megatiny lm-eval model: max_gen_toks {max_new} must be below "
                                 f"max_length {self.max_length}")
            contexts = {i: self.tok_encode(requests[i].args[0])[-(self.max_length - max_new):]
                        for i in indices}
            indices = sorted(indices, key=lambda i: -len(contexts[i]))
            for chunk in self._generation_batches(indices, [len(contexts[i]) for i in indices]):
                texts = self.generate_tokens([contexts[i] for i in chunk], max_new, until, sampling)
                for index, text in zip(chunk, texts):
                    results[index] = text
                    self.cache_hook.add_partial("generate_until", requests[index].args, text)
                progress.update(len(chunk))
        progress.close()
        return results  # type: ignore[return-value]

    def _generation_batches(self, indices: list[int], lengths: list[int]) -> list[list[int]]:
        """Consecutive runs of at most batch_size prompts of one length (what `generate` takes)."""
        batches: list[list[int]] = []
        batch_length = -1
        for index, length in zip(indices, lengths):
            if batches and len(batches[-1]) < self.batch_size and length == batch_length:
                batches[-1].append(index)
            else:
                batches.append([index])
                batch_length = length
        return batches

    def generate_tokens(self, prompts: list[list[int]], max_new_tokens: int, until: list[str],
                        sampling: dict[str, Any] | None = None) -> list[str]:
        """Decoded continuation of each prompt, truncated before the first stop string in `until`.

        A row stops at EOS, once its text contains a stop string, or after `max_new_tokens`
        tokens. Prompts of equal length are decoded together by `megatiny.model.generate.generate`
        (with the KV cache of a megatiny `GPT`; any other model re-runs the sequence every step).
        `sampling`: temperature (0 = greedy, the default), top_k, top_p.
        """
        sampling = {"temperature": 0.0, "top_k": None, "top_p": None, **(sampling or {})}
        if sampling["temperature"] <= 0:  # greedy: the sampling filters play no part
            sampling = {"temperature": 0.0, "top_k": None, "top_p": None}
        texts: list[str] = [""] * len(prompts)
        by_length: dict[int, list[int]] = {}
        for row, prompt in enumerate(prompts):
            by_length.setdefault(len(prompt), []).append(row)
        for rows in by_length.values():
            outputs = self._generate_equal_length([prompts[r] for r in rows], max_new_tokens, until, sampling)
            for row, text in zip(rows, outputs):
                texts[row] = text
        return texts

    def _generate_equal_length(self, prompts: list[list[int]], max_new_tokens: int, until: list[str],
                               sampling: dict[str, Any]) -> list[str]:
        """Equal-length prompts through the one generation loop; stop strings end rows early."""
        state = _Continuations(len(prompts), self.eot_token_id, until, self.tok_decode)

        def stop(tokens: torch.Tensor) -> torch.Tensor:
            state.add(range(len(prompts)), tokens[:, -1].tolist())
            return torch.tensor(state.finished)

        generate(self.model, torch.tensor(prompts, dtype=torch.long, device=self._device), max_new_tokens,
                 eos_token_id=self.eot_token_id, use_cache=hasattr(self.model, "new_kv_cache"),
                 generator=self._generator, stop=stop, **sampling)
        return state.texts()

    def get_model_info(self) -> dict:
        info: dict[str, Any] = {"model_num_parameters": sum(p.numel() for p in self.model.parameters())}
        if self.metadata:
            info["megatiny_step"] = self.metadata.get("step")
            info["megatiny_consumed_samples"] = self.metadata.get("consumed_samples")
        return info


class _Continuations:
    """Generated tokens per row and which rows are still going (no EOS, no stop string yet)."""

    def __init__(self, rows: int, eos_id: int | None, until: list[str], decode: Callable[[list[int]], str]):
        self.tokens: list[list[int]] = [[] for _ in range(rows)]
        self.finished = [False] * rows
        self.eos_id, self.until, self.decode = eos_id, until, decode

    def add(self, rows: Iterable[int], tokens: Iterable[int]) -> None:
        """Append each row's next token (ignored for finished rows); EOS itself is not kept."""
        for row, token in zip(rows, tokens):
            if self.finished[row]:
                continue
            if token == self.eos_id:
                self.finished[row] = True
                continue
            self.tokens[row].append(token)
            if self.until and any(stop in self.decode(self.tokens[row]) for stop in self.until):
                self.finished[row] = True

    def texts(self) -> list[str]:
        """Each row's decoded text, cut before the first occurrence of any stop string."""
        texts = []
        for tokens in self.tokens:
            text = self.decode(tokens)
            for stop in self.until:
                text = text.split(stop)[0]
            texts.append(text)
        return texts
