"""Stage 1, load: model sources (embedded GGUF, file, directory, hub), GGUF dequantise-and-cache,
device/dtype choice, decoder-block discovery, weights streamed one block at a time.
"""
