"""What a pruning search minimises, and the offline multiple-choice accuracy it can use.

    from simdiff_core.evaluation.objectives import load_mc, mc_accuracy, make_objective
    items = load_mc()                                   # shipped set, 70 items (split="dev"/"test")
    mc_accuracy(model, tokenizer, items)                # {"accuracy", "acc_norm", "n", "correct"}
    f = make_objective("ppl", lm, calib_ids)            # f(model) -> float, lower is better
    f = make_objective("accuracy", lm, calib_ids)       # 1 - accuracy on the dev split
    # "repaired_ppl" scores a removal set, not a model: repaired_objective.RepairedEvaluator

Multiple-choice scoring follows lm-evaluation-harness for ``output_type: multiple_choice``: each
choice is a continuation of the context (joined by ``target_delimiter``, a space by default); its
score is the summed log-likelihood of the continuation tokens given the context. ``accuracy`` is
the share of items whose gold choice has the highest score (lm-eval ``acc``), ``acc_norm`` divides
each score by the continuation's length in characters first (lm-eval ``acc_norm``). Tokenisation
as in lm-eval: trailing spaces of the context move to the continuation, the continuation tokens
are ``tok(context + continuation)[len(tok(context)):]``, and the text starts with BOS where the
tokenizer adds one (lm-eval leaves BOS out for most models, so absolute numbers can differ
slightly from the harness; rankings of pruned models do not depend on it).

The shipped set (``data/mc/simdiff_mc.jsonl``) is 70 short items written for this project and
released under CC0 (see ``data/mc/README.md``): science and world-knowledge questions in the style
of ARC, physical-commonsense goals in the style of PIQA, everyday completions in the style of
HellaSwag. Items alternate between a ``dev`` split (what a search may optimise) and a ``test`` split
(what a comparison reports), so a searched plan is not scored on the items that chose it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..common.errors import SimDiffError
from ..common.progress import Progress

MC_PATH = Path(__file__).parent.parent / "data" / "mc" / "simdiff_mc.jsonl"
MC_NOTE = "SimDiff MC set (70 own items, CC0; ARC/PIQA/HellaSwag style), log-likelihood scoring as lm-eval"
OBJECTIVES = {"ppl": "calibration perplexity (lower is better)",
              "accuracy": "1 - multiple-choice accuracy on the shipped MC set's dev split (lower is better)",
              "repaired_ppl": "perplexity after the lstsq repair fitted on the calibration windows, measured on "
                              "held-out windows (lower is better; repaired_objective.py)"}


def load_mc(path: str | Path | None = None, split: str | None = None) -> list[dict]:
    """Items ``{"context", "choices", "gold", ...}`` from a JSONL file (default: the shipped set).

    ``query`` is accepted as a synonym of ``context`` (lm-eval/ARC exports); ``split`` keeps only
    items with that ``split`` field ("dev" or "test"; None = all).
    """
    path = Path(path) if path else MC_PATH
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise SimDiffError(f"no such multiple-choice file: {path}") from None
    items = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            d = json.loads(line)
            ctx = d.get("context", d.get("query"))
            choices, gold = list(d["choices"]), int(d["gold"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise SimDiffError(f"{path}:{n}: bad multiple-choice item ({e}); need context, choices, gold") from None
        if not isinstance(ctx, str) or len(choices) < 2 or not 0 <= gold < len(choices):
            raise SimDiffError(f"{path}:{n}: item needs a context string, >= 2 choices and a valid gold index")
        items.append(dict(d, context=ctx, choices=[str(c) for c in choices], gold=gold))
    if split is not None:
        items = [it for it in items if it.get("split") == split]
    if not items:
        raise SimDiffError(f"{path} has no multiple-choice items" + (f" in split '{split}'" if split else ""))
    return items


def _encode_pair(tokenizer, context: str, continuation: str, prefix: list[int]):
    # lm-eval moves trailing whitespace of the context onto the continuation before encoding.
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tokenizer(context + continuation, add_special_tokens=False).input_ids
    ctx = tokenizer(context, add_special_tokens=False).input_ids
    cont = whole[len(ctx):]
    if not cont:  # tokenizer merged across the boundary: encode the continuation on its own
        cont = tokenizer(continuation, add_special_tokens=False).input_ids
    return prefix + ctx, cont


@torch.inference_mode()
def mc_accuracy(model, tokenizer, items: list[dict], batch_size: int = 16, device=None,
                delimiter: str = " ", progress: Progress | None = None,
                should_stop: Callable[[], bool] | None = None) -> dict:
    """Multiple-choice accuracy of ``model`` on ``items`` by summed continuation log-likelihood.

    Returns ``{"accuracy", "acc_norm", "n", "correct", "mean_gold_logprob"}``.
    """
    from ..common.errors import Cancelled
    from ..data.text import bos_prefix

    if not items:
        raise SimDiffError("no multiple-choice items to score")
    device = device or next(model.parameters()).device
    prefix = bos_prefix(tokenizer)
    if not prefix and tokenizer.eos_token_id is not None:
        prefix = [tokenizer.eos_token_id]  # lm-eval's prefix token for contexts that could be empty
    reqs = []  # (item index, choice index, token ids, continuation length)
    for i, it in enumerate(items):
        for j, ch in enumerate(it["choices"]):
            ctx, cont = _encode_pair(tokenizer, it["context"], delimiter + ch, prefix)
            reqs.append((i, j, ctx + cont, len(cont)))
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ll = {}
    # batch requests with similar context lengths: their continuations span few positions
    order = sorted(range(len(reqs)), key=lambda r: (len(reqs[r][2]) - reqs[r][3], len(reqs[r][2])))
    for b in range(0, len(order), batch_size):
        if should_stop is not None and should_stop():
            raise Cancelled()
        batch = [reqs[r] for r in order[b:b + batch_size]]
        width = max(len(t) for _, _, t, _ in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        for row, (_, _, toks, _) in enumerate(batch):
            ids[row, :len(toks)] = torch.tensor(toks)  # right padding: causal positions stay exact
        # Only continuation positions need logits; the LM head over a 50k-256k vocabulary is most of
        # the cost for small models, so ask for just those rows where the model supports it.
        first = min(len(t) - n - 1 for _, _, t, n in batch)
        keep = torch.arange(first, width - 1, device=device)
        try:
            logits = model(input_ids=ids.to(device), use_cache=False, logits_to_keep=keep).logits
        except TypeError:  # older/custom model code without logits_to_keep
            logits, first = model(input_ids=ids.to(device), use_cache=False).logits[:, first:width - 1], first
        logp = F.log_softmax(logits.float(), dim=-1)  # row position p = token position first + p
        for row, (i, j, toks, n) in enumerate(batch):
            T = len(toks)
            tgt = torch.tensor(toks[T - n:], device=logp.device)
            ll[(i, j)] = float(logp[row, T - n - 1 - first:T - 1 - first].gather(-1, tgt[:, None]).sum())
        if progress is not None:
            progress(min(b + batch_size, len(order)) / len(order), f"choices {min(b + batch_size, len(order))}/{len(order)}")
    correct = correct_norm = 0
    gold_lp = 0.0
    for i, it in enumerate(items):
        scores = [ll[(i, j)] for j in range(len(it["choices"]))]
        normed = [s / max(len(c), 1) for s, c in zip(scores, it["choices"])]
        correct += int(max(range(len(scores)), key=lambda j: scores[j]) == it["gold"])
        correct_norm += int(max(range(len(normed)), key=lambda j: normed[j]) == it["gold"])
        gold_lp += scores[it["gold"]]
    n = len(items)
    return {"accuracy": correct / n, "acc_norm": correct_norm / n, "n": n, "correct": correct,
            "mean_gold_logprob": gold_lp / n}


def make_objective(name: str, lm, calib_ids=None, items: list[dict] | None = None,
                   should_stop: Callable[[], bool] | None = None) -> Callable:
    """``f(model) -> float`` to minimise: calibration perplexity, or 1 - MC accuracy.

    The accuracy objective breaks ties (frequent on a small set) by the gold choices' mean
    log-likelihood, scaled so it never outweighs one item.
    """
    from .evaluate import perplexity

    if name == "ppl":
        if calib_ids is None:
            raise SimDiffError("the ppl objective needs calibration windows")
        return lambda model: perplexity(model, calib_ids, batch_size=4, device=lm.device, should_stop=should_stop)["ppl"]
    if name == "accuracy":
        its = items if items is not None else load_mc(split="dev")

        def f(model):
            r = mc_accuracy(model, lm.tokenizer, its, device=lm.device, should_stop=should_stop)
            tie = 1.0 / (len(its) + 1) * (1.0 / (1.0 + abs(r["mean_gold_logprob"]) + 1e-9))
            return 1.0 - r["accuracy"] - tie
        return f
    if name == "repaired_ppl":
        raise SimDiffError("the repaired_ppl objective scores a removal set (it fits the repair for it), not a model: "
                           "use evaluation.repaired_objective.RepairedEvaluator or repaired_ppl")
    raise SimDiffError(f"unknown objective '{name}'; choose from {', '.join(OBJECTIVES)}")
