"""Stage 7, ship: checkpoints (safetensors + report + mergekit yaml), GGUF out, model cards, the HTML
report and its figures.
"""
