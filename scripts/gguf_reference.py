#!/usr/bin/env python3
"""Reference values for the demo GGUF, computed by gguf-py (llama.cpp's own
Python package), not by mwtop. Writes tests/fixtures/smollm2_gguf_reference.json.

Usage: pip install gguf numpy && python3 scripts/gguf_reference.py MODEL.gguf OUT.json

q/k projections are un-permuted with the inverse of llama.cpp's
convert_hf_to_gguf.py `permute`, so values are in Hugging Face layout.
"""
import json
import sys

from importlib.metadata import version

import numpy as np
from gguf import GGUFReader
from gguf.quants import dequantize

TENSORS = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
    "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
    "blk.0.attn_v.weight": "model.layers.0.self_attn.v_proj.weight",
    "blk.3.ffn_up.weight": "model.layers.3.mlp.up_proj.weight",
    "blk.3.ffn_gate.weight": "model.layers.3.mlp.gate_proj.weight",
    "blk.29.ffn_down.weight": "model.layers.29.mlp.down_proj.weight",
    "blk.29.attn_norm.weight": "model.layers.29.input_layernorm.weight",
}


def unpermute(w, n_head):
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    path, out = sys.argv[1], sys.argv[2]
    r = GGUFReader(path)
    n_head = int(r.fields["llama.attention.head_count"].contents())
    n_kv = int(r.fields["llama.attention.head_count_kv"].contents())
    result = {"source": "gguf-py (llama.cpp gguf package) " + version("gguf"), "tensors": {}}
    for t in r.tensors:
        if t.name not in TENSORS:
            continue
        w = dequantize(t.data, t.tensor_type).astype(np.float64)
        shape = [int(d) for d in reversed(t.shape.tolist())]
        w = w.reshape(shape)
        if t.name.endswith("attn_q.weight"):
            w = unpermute(w, n_head)
        elif t.name.endswith("attn_k.weight"):
            w = unpermute(w, n_kv)
        flat = w.reshape(-1)
        probes = [0, 1, 7, flat.size // 3, flat.size // 2 + 5, flat.size - 1]
        if w.ndim == 2:
            probes += [int(w.shape[1]) * 5 + 3, int(w.shape[1]) * (w.shape[0] - 2) + 17]
        result["tensors"][TENSORS[t.name]] = {
            "stored_name": t.name,
            "stored_dtype": t.tensor_type.name,
            "shape": shape,
            "sum": float(flat.sum()),
            "abs_sum": float(np.abs(flat).sum()),
            "max_abs": float(np.abs(flat).max()),
            "probes": {str(i): float(flat[i]) for i in probes},
        }
    with open(out, "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
        f.write("\n")


if __name__ == "__main__":
    main()
