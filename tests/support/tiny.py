"""Tiny random-weight models of every supported family, built from configs (fast, offline, real code paths).

They share the embedded SmolLM2 tokenizer (vocab 49152), so exports carry a real tokenizer.

``FAMILIES`` is the README's list of supported families ("Supported model families"); a test
(tests/models/test_families.py) checks the two are equal and sweeps score -> prune -> generate -> export ->
reload over every entry, so the list is a tested fact. Other sweeps (e.g. leave-one-out damage)
parametrize over the same tuple.
"""

from __future__ import annotations

import torch

# Same order and names as the README list and simdiff_core.models.blocks.SUPPORTED_FAMILIES.
FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "olmo", "granite",
            "gpt2", "gpt-neox", "opt")
# The first families the suite was written for; older per-family tests keep to these.
CORE_FAMILIES = ("llama", "qwen2", "mistral", "gemma3", "phi3")


def tiny_config(family: str, num_layers: int = 6, vocab_size: int = 49152):
    import transformers as tf

    common = dict(vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    # alternate local (sliding) and global attention, like the real Gemma2/3 patterns
    types = ["sliding_attention" if (i + 1) % 3 else "full_attention" for i in range(num_layers)]
    if family == "llama":
        return tf.LlamaConfig(**common, tie_word_embeddings=True)
    if family == "mistral":
        return tf.MistralConfig(**common, sliding_window=None)
    if family == "qwen2":
        return tf.Qwen2Config(**common, use_sliding_window=False)
    if family == "qwen3":
        return tf.Qwen3Config(**common, head_dim=16)
    if family == "gemma":
        return tf.GemmaConfig(**common, head_dim=16)
    if family == "gemma2":
        return tf.Gemma2Config(**common, head_dim=16, sliding_window=8, layer_types=types)
    if family == "gemma3":
        return tf.Gemma3TextConfig(**common, head_dim=16, sliding_window=8, layer_types=types)
    if family == "phi3":
        return tf.Phi3Config(**common)
    if family == "olmo":
        return tf.OlmoConfig(**common)
    if family == "granite":
        # non-default multipliers, so a code path that forgets one of them shows
        return tf.GraniteConfig(**common, logits_scaling=4.0, residual_multiplier=0.5, embedding_multiplier=2.0,
                                attention_multiplier=0.2)
    if family == "gpt2":
        return tf.GPT2Config(vocab_size=vocab_size, n_embd=64, n_layer=num_layers, n_head=4, n_positions=512,
                             bos_token_id=1, eos_token_id=2)
    if family == "gpt-neox":
        return tf.GPTNeoXConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=num_layers,
                                num_attention_heads=4, intermediate_size=128, max_position_embeddings=512)
    if family == "opt":
        return tf.OPTConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=num_layers, ffn_dim=128,
                            num_attention_heads=4, word_embed_proj_dim=64, max_position_embeddings=512)
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
    from simdiff_core.models.load import wrap_model

    return wrap_model(tiny_model(family, num_layers, seed), tokenizer, source=f"tiny-{family}")
