"""Perplexity, generation samples and latency, for dense and pruned models alike.

    from simdiff_core.evaluation.evaluate import perplexity, eval_windows
    ids = eval_windows(lm.tokenizer)                 # WikiText-2 test, 16 windows x 512 tokens
    perplexity(lm.model, ids, device=lm.device)      # {"ppl": ..., "nll": ..., "tokens": ...}

Protocol (defaults, printed next to every number as ``protocol_note``): the first ``windows``
non-overlapping windows of ``seq_len`` tokens of the text, each starting as the tokenizer starts a
text (BOS where it adds one); every token after the first of a window is predicted from the window
prefix only (no stride/overlap); ppl = exp(total NLL / predicted tokens). On WikiText-2 this is the
word-level v1 release with ``<unk>`` markers, so numbers are not comparable with the raw release.
"""

from __future__ import annotations

import math
import time
from typing import Callable

import torch
import torch.nn.functional as F

from ..common.errors import Cancelled, SimDiffError
from ..common.progress import Progress
from ..data.text import WIKITEXT_NOTE, bos_prefix, load_text, make_windows

DEFAULT_EVAL_SEQ_LEN = 512
DEFAULT_EVAL_WINDOWS = 16
MAX_LOSS = 700.0  # exp(700) is near float64's limit: a larger mean NLL reports ppl exp(700), not an overflow


def ppl_from_loss(loss: float) -> float:
    """Perplexity of a mean NLL per predicted token (capped at exp(``MAX_LOSS``))."""
    return math.exp(min(loss, MAX_LOSS))


def eval_windows(tokenizer, source: str = "wikitext2", seq_len: int = DEFAULT_EVAL_SEQ_LEN,
                 windows: int = DEFAULT_EVAL_WINDOWS) -> torch.Tensor:
    return make_windows(tokenizer, load_text(source, purpose="eval"), windows, seq_len, purpose="eval")


def protocol_note(tokenizer, source: str, seq_len: int, windows: int) -> str:
    desc = load_text(source, purpose="eval").description if source else "text"
    if source in ("wikitext2", "wikitext2:test", None, ""):
        desc = WIKITEXT_NOTE + ", test split"
    bos = "BOS-prefixed" if bos_prefix(tokenizer) else "no BOS"
    return f"{desc}; {windows} non-overlapping windows x {seq_len} tokens, {bos}"


def _device_of(model) -> torch.device:
    return next(model.parameters()).device


@torch.inference_mode()
def perplexity(model, input_ids: torch.Tensor, batch_size: int = 2, device=None,
               progress: Progress | None = None,
               should_stop: Callable[[], bool] | None = None) -> dict:
    """Perplexity of ``model`` on windows ``input_ids`` (N, S)."""
    device = device or _device_of(model)
    total_nll, total_tok = 0.0, 0
    N = input_ids.shape[0]
    for start in range(0, N, batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled()
        ids = input_ids[start:start + batch_size].to(device)
        logits = model(input_ids=ids, use_cache=False).logits
        # NLL in float32 whatever the model dtype; summed so windows weigh by tokens.
        nll = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]),
                              ids[:, 1:].reshape(-1), reduction="sum")
        total_nll += float(nll)
        total_tok += ids[:, 1:].numel()
        del logits
        if progress is not None:
            progress(min(start + batch_size, N) / N, f"window {min(start + batch_size, N)}/{N}")
    if total_tok == 0:
        raise SimDiffError("no tokens to evaluate")
    mean = total_nll / total_tok
    return {"ppl": ppl_from_loss(mean), "nll": mean, "tokens": total_tok}


@torch.inference_mode()
def generate_sample(model, tokenizer, prompt: str, max_new_tokens: int = 40, device=None) -> str:
    """Greedy continuation of ``prompt`` (with KV cache), decoded without the prompt."""
    device = device or _device_of(model)
    enc = tokenizer(prompt, return_tensors="pt").to(device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                         pad_token_id=tokenizer.pad_token_id or tokenizer.eos_token_id)
    return tokenizer.decode(out[0, enc["input_ids"].shape[1]:], skip_special_tokens=True)


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def measure_latency(model, prompt_len: int = 256, decode_tokens: int = 32, repeats: int = 3,
                    vocab_size: int | None = None, device=None) -> dict:
    """Prefill latency (s) for one prompt of ``prompt_len`` tokens and decode speed (tokens/s).

    Decode runs ``decode_tokens`` greedy steps with the KV cache after the prefill; the best of
    ``repeats`` runs is reported (minimum is the least noisy estimate on a shared machine).
    """
    from transformers import DynamicCache

    device = device or _device_of(model)
    vocab = vocab_size or model.config.get_text_config().vocab_size
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (1, prompt_len), generator=g).to(device)
    best_prefill, best_decode = float("inf"), float("inf")
    for _ in range(repeats):
        cache = DynamicCache(config=model.config)
        _sync(device)
        t0 = time.perf_counter()
        out = model(input_ids=ids, past_key_values=cache, use_cache=True)
        _sync(device)
        best_prefill = min(best_prefill, time.perf_counter() - t0)
        nxt = out.logits[:, -1:].argmax(-1)
        cache = out.past_key_values
        t0 = time.perf_counter()
        for _ in range(decode_tokens):
            out = model(input_ids=nxt, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            nxt = out.logits[:, -1:].argmax(-1)
        _sync(device)
        best_decode = min(best_decode, time.perf_counter() - t0)
    return {"prefill_s": best_prefill, "decode_tok_s": decode_tokens / best_decode,
            "prompt_len": prompt_len, "decode_tokens": decode_tokens}
