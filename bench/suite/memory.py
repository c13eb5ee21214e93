"""Peak extra memory of scoring over a plain forward, at two depths and two calibration sizes."""

from __future__ import annotations

import torch

from .harness import llama_dir_model, peak_extra_mb


def bench_memory(depths, sizes, seq_len, hidden, device) -> dict:
    """Extra peak of scoring over a plain base forward on the same batch size, per depth and calib size."""
    from simdiff_core.analysis.score import forward_base, score_model
    from simdiff_core.models.load import wrap_model

    table = {}
    for L in depths:
        model = llama_dir_model(L, hidden, hidden * 3, 2048).to(device)
        lm = wrap_model(model, None, f"llama-{L}x{hidden}")
        for n in sizes:
            ids = torch.randint(0, 2048, (n, seq_len), generator=torch.Generator().manual_seed(0))
            bs = 2

            def fwd():
                with torch.inference_mode():
                    for i in range(0, n, bs):
                        forward_base(model, ids[i:i + bs].to(device))

            if torch.device(device).type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                base0 = torch.cuda.memory_allocated()
                fwd()
                f = (torch.cuda.max_memory_allocated() - base0) / 2**20
                torch.cuda.reset_peak_memory_stats()
                score_model(lm, ids, batch_size=bs, linear=False)
                s = (torch.cuda.max_memory_allocated() - base0) / 2**20
            else:
                fwd(), score_model(lm, ids, batch_size=bs, linear=False)  # warm the allocator for both
                f = peak_extra_mb(fwd)
                s = peak_extra_mb(lambda: score_model(lm, ids, batch_size=bs, linear=False))
            table[f"L={L},N={n}"] = {"forward_peak_mb": round(f, 2), "scoring_peak_mb": round(s, 2),
                                     "extra_mb": round(s - f, 2), "layers_x_tokens": L * n * seq_len}
        del model, lm
    return table
