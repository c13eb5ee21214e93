"""Tiny random-weight models of several families, built from configs (fast, offline, real code paths).

They share the embedded SmolLM2 tokenizer (vocab 49152), so exports carry a real tokenizer.
"""

from __future__ import annotations

import torch

FAMILIES = ("llama", "qwen2", "mistral", "gemma3", "phi3")


def tiny_config(family: str, num_layers: int = 6, vocab_size: int = 49152):
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    if family == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=True)
    if family == "qwen2":
        return tf.Qwen2Config(**common, use_sliding_window=False)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if family == "gemma3":
        # alternate local (sliding) and global attention, like the real Gemma3 pattern
        types = ["sliding_attention" if (i + 1) % 3 else "full_attention" for i in range(num_layers)]
        return tf.Gemma3TextConfig(**common, head_dim=16, sliding_window=8, layer_types=types)
    if family == "phi3":
        return tf.Phi3Config(**common)
    raise ValueError(family)


def tiny_model(family: str, num_layers: int = 6, seed: int = 0, vocab_size: int = 49152):
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = tiny_config(family, num_layers, vocab_size)
    model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
    # Random init gives near-identical blocks; scale the residual writes so blocks differ visibly.
    with torch.no_grad():
        for i, p in enumerate(model.parameters()):
            if p.ndim == 2:
                p.mul_(1.0 + 0.5 * ((i % 5) - 2) / 2)
    return model.eval()


def tiny_lm(family: str, tokenizer, num_layers: int = 6, seed: int = 0):
    from simdiff_core.load import wrap_model

    return wrap_model(tiny_model(family, num_layers, seed), tokenizer, source=f"tiny-{family}")
