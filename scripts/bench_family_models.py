#!/usr/bin/env python3
"""Same-shape random models of every family, for timing per parameter:
each is written by transformers' own save_pretrained with the family's
settings of scripts/reference_families.py (norms, QK-norms, partial rotary,
soft caps, windows, local RoPE), but all share one size: 16 layers,
d_model 1024, d_ff 4096, 16 query heads and 4 key/value heads of 64 dims
(about 240M parameters; byte-level vocabulary of 260, so the head is
negligible). Run on the GPU machine:

    python3 scripts/bench_family_models.py OUTDIR
"""
import os
import sys

import torch
import transformers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_families as rf  # noqa: E402

L, D, F, NH, NKV, HD = 16, 1024, 4096, 16, 4, 64
WINDOW = 4096
BENCHED = ["llama", "mistral", "qwen2", "qwen3", "phi3", "olmo2", "gemma2", "gemma3"]


def main():
    out = sys.argv[1]
    for name in sys.argv[2:] or BENCHED:
        cfg_cls, model_cls, extra, _, _ = rf.FAMILIES[name]
        kwargs = dict(rf.COMMON, hidden_size=D, intermediate_size=F, num_hidden_layers=L,
                      num_attention_heads=NH, num_key_value_heads=NKV, head_dim=HD,
                      max_position_embeddings=8192)
        kwargs.update(extra)
        if kwargs.get("sliding_window"):
            kwargs["sliding_window"] = WINDOW
        if "query_pre_attn_scalar" in kwargs:
            kwargs["query_pre_attn_scalar"] = HD
        if "layer_types" in kwargs:  # Gemma 3: five sliding layers, then a global one
            kwargs["layer_types"] = ["full_attention" if (i + 1) % 6 == 0 else "sliding_attention"
                                     for i in range(L)]
        cfg = getattr(transformers, cfg_cls)(**kwargs)
        torch.manual_seed(0)
        model = getattr(transformers, model_cls)(cfg).float().eval()
        path = os.path.join(out, name)
        os.makedirs(path, exist_ok=True)
        rf.write_tokenizer(path)
        model.save_pretrained(path, safe_serialization=True)
        n = sum(p.numel() for p in model.parameters())
        print(f"{name}: {n / 1e6:.1f}M parameters", flush=True)


if __name__ == "__main__":
    main()
