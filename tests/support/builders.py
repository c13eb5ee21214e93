"""Builders shared by several test folders: a saved multi-block Llama, Scores with given window sums, and
the tensors of a saved (sharded) checkpoint read back.

Why here: test modules never import each other; what two folders need lives in tests/support/.
Cost: ``save_model`` builds and saves a ~13 MB fp32 model (12 blocks, hidden 128); ``constructed_scores``
is plain Python.
"""

from __future__ import annotations

import numpy as np
import torch

from simdiff_core.analysis.score import Scores


def checkpoint_tensors(d) -> dict:
    """Every tensor of the ``*.safetensors`` shards in folder ``d``, by name (a name stored twice fails)."""
    from pathlib import Path

    from safetensors import safe_open

    out = {}
    for f in sorted(Path(d).glob("*.safetensors")):
        with safe_open(str(f), framework="pt") as h:
            for k in h.keys():
                assert k not in out, f"{k} stored twice"
                out[k] = h.get_tensor(k)
    return out


def save_model(path, num_layers=12, hidden=128, inter=512, vocab=1024, tie=False, tokenizer=None):
    """A random Llama whose blocks differ (weights scaled per parameter), saved under ``path``."""
    import transformers as tf

    torch.manual_seed(0)
    cfg = tf.LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=num_layers,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256,
                         tie_word_embeddings=tie)
    model = tf.AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()
    with torch.no_grad():  # make blocks differ (random init makes them near-identical)
        for i, p in enumerate(model.parameters()):
            if p.ndim == 2:
                p.mul_(1.0 + 0.25 * (i % 5))
    model.save_pretrained(path)
    if tokenizer is not None:
        tokenizer.save_pretrained(path)
    return model


def constructed_scores(cos_by_block: list[list[float]]) -> Scores:
    """Scores whose window sums are given (one token per window): block i's cosine in window w."""
    L, N = len(cos_by_block), len(cos_by_block[0])
    win = {"tokens": [1.0] * N}
    for k in ("sq", "ab", "x2", "xa", "sq_rel", "ab_rel"):
        win[k] = [[1.0] * N for _ in range(L)]
    win["cos"] = [list(r) for r in cos_by_block]
    layers = []
    for i, r in enumerate(cos_by_block):
        c = float(np.mean(r))
        layers.append({"index": i, "cosine": c, "bi": 1 - c, "angular": float(np.arccos(c) / np.pi), "mssd": 1.0,
                       "masd": 1.0, "mssd_rel": 1.0, "masd_rel": 1.0})
    return Scores("constructed", L, layers, windows=win)
