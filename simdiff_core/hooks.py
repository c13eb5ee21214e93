"""Forward hooks on decoder blocks, attached only inside a ``with`` block.

    with block_hooks(lm.blocks, lambda i, x, y: print(i, x.shape)):
        lm.model(ids)

Each callback gets the block index, the block's input hidden states ``x`` (B, S, H) and its output
``y`` (B, S, H). Hooks are removed in ``finally`` so an exception (or a cancel raised from the
callback) never leaves a model with stray hooks — the loaded model is shared between app sessions.

Why hooks and not ``output_hidden_states``: the last hidden state HF returns already has the final
norm applied, and asking for all of them keeps L+1 activations alive at once.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable

import torch
from torch import nn


def block_io(args, kwargs, output) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) hidden states of a decoder block call, across transformers versions."""
    x = args[0] if args else kwargs.get("hidden_states")
    y = output[0] if isinstance(output, (tuple, list)) else output
    return x, y


@contextmanager
def block_hooks(blocks: nn.ModuleList, fn: Callable[[int, torch.Tensor, torch.Tensor], None]):
    handles = []
    try:
        for i, block in enumerate(blocks):
            def hook(module, args, kwargs, output, _i=i):
                x, y = block_io(args, kwargs, output)
                fn(_i, x, y)

            handles.append(block.register_forward_hook(hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
