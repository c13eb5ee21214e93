"""Stage 5, measure: perplexity/latency/generation (in memory or streamed), the shared evaluator of
pruned variants, objectives (ppl, MC accuracy), downstream tasks, LoRA recovery, leave-one-out
damage and criterion agreement.
"""
