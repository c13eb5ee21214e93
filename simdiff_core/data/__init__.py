"""Stage 2, calibrate: text sources and deterministic token windows (text.py); the shipped data sets
live here too (wikitext-2/, mc/).
"""
