#!/usr/bin/env python3
"""A Llama-3-8B-shaped checkpoint with random bf16 weights, for the scale
run of scripts/gpu-scale.sh: 32 layers, d_model 4096, d_ff 14336, 32 query
and 8 key/value heads of 128 dims, vocabulary 128,256, RoPE base 500,000;
four safetensors shards with their index, as transformers writes them, and
a byte-level tokenizer (ids below 260; the rest of the vocabulary is never
produced by it, only by the head). Weights are drawn on the GPU (std 0.02,
norms 1 + 0.1 N(0,1)), so writing 16 GB takes seconds, not minutes.

    [SCALE_SHAPE=8b|70b] [SCALE_LAYERS=N] python3 scripts/write_scale_model.py OUTDIR
"""
import json
import os
import sys

import torch
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference_families as rf  # noqa: E402

SHAPES = {
    "8b": (32, 4096, 14336, 32, 8, 128, 128256),
    # Llama-3-70B: 141 GB in bf16, more than one H200 holds (issue 17's
    # split run). A two-GPU machine's disk is smaller: write it to /dev/shm.
    "70b": (80, 8192, 28672, 64, 8, 128, 128256),
}
L, D, F, NH, NKV, HD, V = SHAPES[os.environ.get("SCALE_SHAPE", "8b")]
L = int(os.environ.get("SCALE_LAYERS", L))  # fewer layers: a quicker trial


def tensors():
    """(name, shape) in transformers' order."""
    yield "model.embed_tokens.weight", (V, D)
    for i in range(L):
        p = f"model.layers.{i}."
        yield p + "input_layernorm.weight", (D,)
        yield p + "self_attn.q_proj.weight", (NH * HD, D)
        yield p + "self_attn.k_proj.weight", (NKV * HD, D)
        yield p + "self_attn.v_proj.weight", (NKV * HD, D)
        yield p + "self_attn.o_proj.weight", (D, NH * HD)
        yield p + "post_attention_layernorm.weight", (D,)
        yield p + "mlp.gate_proj.weight", (F, D)
        yield p + "mlp.up_proj.weight", (F, D)
        yield p + "mlp.down_proj.weight", (D, F)
    yield "model.norm.weight", (D,)
    yield "lm_head.weight", (V, D)


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    g = torch.Generator(device="cuda").manual_seed(8)
    items = list(tensors())
    total = sum(torch.Size(s).numel() for _, s in items) * 2
    # Shards of at most ~5 GB (four for the 8B shape), as transformers writes.
    n_shards = max(4, -(-total // 5_000_000_000))
    shards, current, size = [], {}, 0
    for name, shape in items:
        if name.endswith("norm.weight"):
            t = 1.0 + 0.1 * torch.randn(shape, generator=g, device="cuda")
        else:
            t = 0.02 * torch.randn(shape, generator=g, device="cuda")
        current[name] = t.to(torch.bfloat16).cpu()
        size += current[name].numel() * 2
        if size >= total / n_shards and len(shards) < n_shards - 1:
            shards.append(current)
            current, size = {}, 0
    shards.append(current)
    index = {"metadata": {"total_size": total}, "weight_map": {}}
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        tmp = os.path.join(out, fname + ".part")
        save_file(shard, tmp, metadata={"format": "pt"})
        os.replace(tmp, os.path.join(out, fname))
        for name in shard:
            index["weight_map"][name] = fname
    json.dump(index, open(os.path.join(out, "model.safetensors.index.json"), "w"), indent=2)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "hidden_size": D, "intermediate_size": F, "num_hidden_layers": L,
        "num_attention_heads": NH, "num_key_value_heads": NKV, "head_dim": HD,
        "vocab_size": V, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
        "max_position_embeddings": 8192, "tie_word_embeddings": False,
        "hidden_act": "silu", "torch_dtype": "bfloat16",
        "bos_token_id": rf.BOS, "eos_token_id": rf.EOS,
        "attention_bias": False, "mlp_bias": False,
    }
    json.dump(config, open(os.path.join(out, "config.json"), "w"), indent=2)
    rf.write_tokenizer(out)
    print(f"wrote {total / 1e9:.2f} GB in {len(shards)} shards to {out}", flush=True)


if __name__ == "__main__":
    main()
