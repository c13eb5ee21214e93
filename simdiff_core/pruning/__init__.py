"""Stage 4, plan and cut: plans (which blocks go), their stability and text sensitivity, pruned views,
parameter-delta merging, and the model a plan describes.
"""
