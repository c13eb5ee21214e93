"""Honest comparisons for a pruned model improved by something fitted or trained on text.

    from simdiff_core.evaluation.honest import second_domain_text, second_domain_windows, verdict
    spec = second_domain_text("wikitext2", "wikitext2")           # "shipped:code"
    ids, protocol = second_domain_windows(tok, spec, seq_len=256, windows=4)
    v = verdict({"dense": 25.1, "pruned": 75.0, "treated": 26.0, "dense_treated": 16.0},
                second={"dense": 9.0, "pruned": 30.0, "treated": 28.0, "dense_treated": 9.5},
                train_text="wikitext2", eval_text="wikitext2", treatment="LoRA")
    v["flags"]       # ["same_corpus", "below_dense_untrained_only", "below_dense_only_in_domain"]
    v["messages"]    # one sentence per flag, for the page, the card and the HTML report
    v["headline"]    # the comparison to lead with: treated vs the dense model given the same treatment

Why: a LoRA "recovery" trained on WikiText-2 valid and measured on WikiText-2 test mostly teaches
the corpus's format. On the embedded SmolLM2 (7/30 removed, 40 steps, test 4 x 256) the pruned
model goes 75.0 -> 26.0, below the untrained dense model's 25.1, but the *dense* model given the
same 40 steps goes 25.1 -> 16.0. So the honest reference is the dense model given the same treatment
on the same text, and a perplexity on a text from another domain (the shipped code or dialogue
sample) sits beside the in-domain one. A number that only looks good because the model learned the
evaluation corpus's format is flagged here, never shown as recovery.

Inputs are perplexities keyed ``dense`` (untrained dense), ``pruned``, ``treated`` (pruned + the
treatment) and ``dense_treated`` (dense + the same treatment; None when not measured). Cost: none
(plain arithmetic); the windows helper tokenises at most the requested windows of a shipped text.
"""

from __future__ import annotations

import math
import os

from ..common.errors import SimDiffError

SECOND_DOMAINS = ("shipped:code", "shipped:dialogue")

# Flag codes -> what they mean (the messages add the numbers).
FLAGS = {
    "worse_held_out": "the treatment raised held-out perplexity: not an improvement",
    "same_corpus": "trained and evaluated on two parts of one corpus: part of any gain is the corpus's format",
    "below_dense_untrained_only": "below the untrained dense model only: the dense model given the same treatment "
                                  "is lower still",
    "below_dense_only_in_domain": "recovered below the dense model only on the training corpus' domain",
    "worse_out_of_domain": "the treatment raised perplexity on the second-domain text",
    "no_dense_reference": "the dense model was not given the same treatment: no fair reference",
    "no_second_domain": "no second-domain perplexity was measured",
}


def corpus_of(spec: str | None) -> str:
    """Which corpus a text spec reads (``wikitext2:valid`` and ``wikitext2:test`` are one corpus)."""
    s = (spec or "wikitext2").strip()
    if s == "wikitext2" or s.startswith("wikitext2:"):
        return "wikitext2"
    if s.startswith("hf:"):  # DATASET[/CONFIG]/SPLIT: the splits of one dataset are one corpus
        parts = s[3:].strip("/").split("/")
        return "hf:" + "/".join(parts[:-1] or parts)
    if s.startswith(("shipped:", "text:")):
        return s
    return os.path.realpath(os.path.expanduser(s))


def second_domain_text(train_text: str | None, eval_text: str | None = "wikitext2") -> str:
    """The shipped text of another domain than both the training and the evaluation text."""
    used = {corpus_of(train_text), corpus_of(eval_text)}
    for spec in SECOND_DOMAINS:
        if spec not in used:
            return spec
    raise SimDiffError("no shipped second-domain text is left: train or evaluate on something else")


def second_domain_windows(tokenizer, spec: str, seq_len: int, windows: int):
    """(ids, protocol) of up to ``windows`` windows of ``seq_len`` tokens of ``spec``: the shipped
    samples are short (code: 17 x 256 or 8 x 512 SmolLM2 tokens), so the count is capped at what fits
    and the protocol line says how many were used."""
    from ..data.text import count_windows
    from .evaluate import eval_windows, protocol_note

    fit = count_windows(tokenizer, spec, int(seq_len), purpose="eval", limit=int(windows))
    if fit < 1:
        raise SimDiffError(f"{spec} holds no window of {seq_len} tokens: use a shorter evaluation length")
    n = min(int(windows), fit)
    return eval_windows(tokenizer, spec, int(seq_len), n), protocol_note(tokenizer, spec, int(seq_len), n)


def _lt(a, b) -> bool:
    return a is not None and b is not None and a < b


def _gt(a, b) -> bool:
    return a is not None and b is not None and a > b


def _f(x) -> str:
    return "n/a" if x is None else f"{x:.1f}"


def verdict(primary: dict, second: dict | None = None, train_text: str | None = None,
            eval_text: str | None = "wikitext2", treatment: str = "LoRA", trains: bool = True,
            eval_name: str = "held-out text", second_name: str = "second-domain text") -> dict:
    """Flags, one message per flag, ratios and a headline for a treated pruned model (see module doc).

    ``trains``: the treatment learns from text the dense model could learn too (LoRA); a repair of
    removed blocks is the identity on the dense model, so there ``dense_treated`` is ``dense``.
    ``improved`` is True only when the treatment lowered held-out perplexity and did not raise the
    second-domain one.
    """
    p = dict(primary or {})
    s = dict(second or {}) if second else None
    if not trains:
        p.setdefault("dense_treated", p.get("dense"))
        if s is not None:
            s.setdefault("dense_treated", s.get("dense"))
    flags, messages = [], []

    def add(code, msg):
        flags.append(code)
        messages.append(msg)

    if _gt(p.get("treated"), p.get("pruned")):
        add("worse_held_out", f"{treatment} raised the {eval_name} perplexity ({_f(p['pruned'])} → "
                              f"{_f(p['treated'])}): not an improvement.")
    if trains and train_text is not None and corpus_of(train_text) == corpus_of(eval_text):
        add("same_corpus", f"Trained on {train_text} and evaluated on another part of the same corpus: part of "
                           "any gain is the corpus's format, not repair of the cut.")
    below_dense = _lt(p.get("treated"), p.get("dense"))
    if below_dense and trains and p.get("dense_treated") is not None and not _lt(p["treated"], p["dense_treated"]):
        add("below_dense_untrained_only", f"Below the untrained dense model ({_f(p['dense'])}) only: the dense "
                                          f"model given the same {treatment} reaches {_f(p['dense_treated'])}.")
    if below_dense and s is not None and s.get("treated") is not None and not _lt(s["treated"], s.get("dense")):
        add("below_dense_only_in_domain", f"Recovered below the dense model only on the training corpus' domain: "
                                          f"on the {second_name} it is {_f(s['treated'])} vs dense "
                                          f"{_f(s.get('dense'))}.")
    if s is not None and _gt(s.get("treated"), s.get("pruned")):
        add("worse_out_of_domain", f"{treatment} raised the {second_name} perplexity ({_f(s['pruned'])} → "
                                   f"{_f(s['treated'])}).")
    if trains and p.get("dense_treated") is None:
        add("no_dense_reference", f"The dense model was not given the same {treatment}: compare with care.")
    if s is None:
        add("no_second_domain", "No second-domain perplexity was measured.")

    def ratio(a, b):
        return a / b if a is not None and b else None

    out = {"flags": flags, "messages": messages, "treatment": treatment,
           "ratio_pruned_vs_dense": ratio(p.get("pruned"), p.get("dense")),
           "ratio_treated_vs_dense_treated": ratio(p.get("treated"), p.get("dense_treated")),
           "improved": bool(_lt(p.get("treated"), p.get("pruned"))
                            and not (s is not None and _gt(s.get("treated"), s.get("pruned"))))}
    if s is not None:
        out["second_ratio_pruned_vs_dense"] = ratio(s.get("pruned"), s.get("dense"))
        out["second_ratio_treated_vs_dense_treated"] = ratio(s.get("treated"), s.get("dense_treated"))
    # How much of the pruned model's gain (in log perplexity) the dense model also gets from the same
    # treatment: the part that is adaptation to the text, not repair of the removed blocks.
    if trains and all(p.get(k) for k in ("dense", "pruned", "treated", "dense_treated")) and p["treated"] < p["pruned"]:
        out["dense_gain_share"] = math.log(p["dense"] / p["dense_treated"]) / math.log(p["pruned"] / p["treated"])
    if out["ratio_treated_vs_dense_treated"] is not None:
        head = (f"Pruned + {treatment}: ×{out['ratio_treated_vs_dense_treated']:.2f} the dense model given the same "
                f"{treatment}" if trains else f"Pruned + {treatment}: ×{out['ratio_treated_vs_dense_treated']:.2f} "
                "the dense model")
        if out["ratio_pruned_vs_dense"] is not None:
            head += f" (pruned: ×{out['ratio_pruned_vs_dense']:.2f} the dense model)"
        out["headline"] = head + f" on the {eval_name}."
    else:
        out["headline"] = f"Pruned + {treatment}: no dense reference measured."
    return out
