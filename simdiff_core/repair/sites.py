"""Where, in each family's decoder block, the MLP output joins the residual stream — and whether a fold is exact.

    from simdiff_core.repair.sites import repair_site, refusal
    site = repair_site(block, family, method)   # RepairSite: the module whose output is M, where to fold T
    refusal(model, "lstsq")                     # None, or the one-line reason the method does not apply

A fold is exact only if block ``a-1`` computes ``h_a = R + M`` with ``M`` an affine function of one
weight we can rewrite. Per family (checked against the transformers source and by
tests/repair/test_repair.py's algebra check on a tiny model of every family):

* Llama, Mistral, Qwen2/3, Gemma (1), Phi-3, OLMo (1), GPT-NeoX (parallel residual: still a plain sum),
  OPT (pre-LN): ``M`` = the down projection's output (``mlp.down_proj``, ``mlp.dense_4h_to_h``,
  ``fc2``; GPT-2's ``mlp.c_proj`` is a ``Conv1D``, weight stored transposed: fold on the other side).
* Granite: the block adds ``M·residual_multiplier``: ``M`` is taken after the scale (the fold is the same).
* Gemma 2/3, OLMo 2 (``post_feedforward_layernorm`` after the MLP): ``M = norm(z)``; a full matrix
  ``T`` on ``norm(z)`` is no change of ``down_proj`` (``norm(z)·T`` ≠ ``norm(z·T')``), so ``lstsq``
  is refused there. A per-channel scale is exact: it folds into the norm's gain (``rescale``).
* OPT with ``do_layer_norm_before=False`` (OPT-350m) normalises *after* the residual sum: refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..common.errors import SimDiffError
from ..models.blocks import text_config

# model_type -> dotted path (inside a block) of the projection whose output is M.
DOWN_PROJ = {"llama": "mlp.down_proj", "mistral": "mlp.down_proj", "qwen2": "mlp.down_proj",
             "qwen3": "mlp.down_proj", "gemma": "mlp.down_proj", "gemma2": "mlp.down_proj",
             "gemma3_text": "mlp.down_proj", "gemma3": "mlp.down_proj", "phi3": "mlp.down_proj",
             "olmo": "mlp.down_proj", "olmo2": "mlp.down_proj", "granite": "mlp.down_proj",
             "gpt2": "mlp.c_proj", "gpt_neox": "mlp.dense_4h_to_h", "opt": "fc2"}
POST_NORM = "post_feedforward_layernorm"


class RepairRefused(SimDiffError):
    """A repair method does not apply to this model (one line saying why)."""


@dataclass
class RepairSite:
    """Where ``M`` is read in one block and where a fitted map is folded."""

    path: str           # dotted path inside the block of the module whose output is M (before ``scale``)
    scale: float        # the block adds ``scale · output`` to the residual (Granite's residual_multiplier)
    fold: str           # "linear" (nn.Linear weight (out, in)), "conv1d" (GPT-2: (in, out)), "norm_gain"
    gemma_gain: bool = False  # norm_gain only: the norm multiplies by (1 + weight) (Gemma RMSNorm)


def family_of(model: nn.Module) -> str:
    return getattr(text_config(model.config), "model_type", "unknown")


def refusal(model: nn.Module, method: str) -> str | None:
    """None if ``method`` folds exactly into this model's blocks, else the one-line reason it does not."""
    if method == "none":
        return None
    fam = family_of(model)
    cfg = text_config(model.config)
    if fam not in DOWN_PROJ:
        return (f"repair '{method}' does not support model family '{fam}' (supported: "
                f"{', '.join(sorted(set(DOWN_PROJ)))})")
    if fam == "opt" and not getattr(cfg, "do_layer_norm_before", True):
        return (f"repair '{method}' does not apply to {fam} with do_layer_norm_before=False: the block normalises "
                "after the residual sum, so no weight change reproduces R + M·T")
    if method in ("lstsq", "ridge") and fam in ("gemma2", "gemma3", "gemma3_text", "olmo2"):
        return (f"repair '{method}' does not apply to {fam}: its post_feedforward_layernorm sits between down_proj and "
                "the residual add, so a d x d map cannot be folded exactly; use --repair rescale (exact there)")
    return None


def repair_site(block: nn.Module, family: str, method: str) -> RepairSite:
    """The site of ``method`` in ``block`` of ``family`` (call ``refusal`` first)."""
    down = DOWN_PROJ[family]
    scale = float(getattr(block, "residual_multiplier", 1.0)) if family == "granite" else 1.0
    post = getattr(block, POST_NORM, None)
    if post is not None:
        if method != "rescale":
            raise RepairRefused(f"repair '{method}' cannot fold through {POST_NORM}")
        if getattr(post, "weight", None) is None:
            raise RepairRefused(f"repair 'rescale': {POST_NORM} has no gain to fold into")
        return RepairSite(POST_NORM, 1.0, "norm_gain", gemma_gain=type(post).__name__.startswith("Gemma"))
    mod = block.get_submodule(down)
    fold = "conv1d" if type(mod).__name__ == "Conv1D" else "linear"
    if fold == "linear" and not isinstance(mod, nn.Linear):
        raise RepairRefused(f"repair '{method}': {down} is a {type(mod).__name__}, not a linear layer")
    return RepairSite(down, scale, fold)


def fold_note(fam: str, sites: list[RepairSite]) -> str:
    """The record's one-line note on where and how the maps were folded in this family."""
    notes = {"norm_gain": f"{fam}: the per-channel scale is folded into post_feedforward_layernorm's gain (exact)",
             "conv1d": f"{fam}: Conv1D stores its weight (in, out): folded as W·T",
             "linear": f"{fam}: folded into the down projection as Tᵀ·W (exact)"}
    folds = {s.fold for s in sites}
    return "; ".join(notes[f] for f in sorted(folds)) + (
        f"; M taken after residual_multiplier={sites[0].scale:g}" if fam == "granite" and sites else "")
