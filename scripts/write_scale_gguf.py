#!/usr/bin/env python3
"""A Llama-3-8B-shaped GGUF with random quantized blocks, for the scale run
of quantized weights (scripts/gpu-scale-gguf.sh): 32 layers, d_model 4096,
d_ff 14336, 32 query and 8 key/value heads of 128 dims, RoPE base 500,000,
every matrix in Q4_0 or Q8_0 blocks (the norms f32), the head tied to the
embedding. The vocabulary and tokenizer are the donor GGUF's (SmolLM2's
49,152 tokens): llama.cpp and mwtop both need a real tokenizer in the
file, and the embedding's rows follow it. The blocks are random bytes with
one f16 scale per block drawn so that weights have a standard deviation
near 0.02: writing 4.6 GB takes seconds, and nothing is quantized.

    python3 scripts/write_scale_gguf.py DONOR.gguf OUT.gguf [q4_0|q8_0] [LAYERS]
"""
import os
import sys

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter

L, D, F, NH, NKV, HD = 32, 4096, 14336, 32, 8, 128
FORMATS = {
    # (type, bytes per 32-weight block, standard deviation of a block's codes)
    "q4_0": (GGMLQuantizationType.Q4_0, 18, 4.61),  # codes q - 8, q uniform in 0..15
    "q8_0": (GGMLQuantizationType.Q8_0, 34, 73.9),  # codes uniform in -128..127
}


def blocks(rng, rows, cols, fmt):
    """(rows, row bytes) of random blocks: f16 scale first, then the codes."""
    qtype, size, code_std = FORMATS[fmt]
    n = rows * (cols // 32)
    out = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    scale = (0.02 / code_std) * (1.0 + 0.1 * rng.standard_normal(n, dtype=np.float32))
    out[:, :2] = scale.astype(np.float16).view(np.uint8).reshape(n, 2)
    return out.reshape(rows, (cols // 32) * size), qtype


def main():
    donor, dst = sys.argv[1], sys.argv[2]
    fmt = sys.argv[3] if len(sys.argv) > 3 else "q4_0"
    layers = int(sys.argv[4]) if len(sys.argv) > 4 else L
    r = GGUFReader(donor)
    tokens = r.fields["tokenizer.ggml.tokens"]
    vocab = len(tokens.data)
    w = GGUFWriter(dst + ".tmp", "llama")
    w.add_name(f"scale-llama3-8b-shape-{fmt}")
    w.add_block_count(layers)
    w.add_context_length(8192)
    w.add_embedding_length(D)
    w.add_feed_forward_length(F)
    w.add_head_count(NH)
    w.add_head_count_kv(NKV)
    w.add_rope_dimension_count(HD)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_file_type(2 if fmt == "q4_0" else 7)
    for name, field in r.fields.items():
        if not name.startswith("tokenizer."):
            continue
        if field.types[0] == GGUFValueType.ARRAY:
            w.add_array(name, field.contents())
        else:
            w.add_key_value(name, field.contents(), field.types[0])
    rng = np.random.default_rng(0)

    def matrix(name, rows, cols):
        data, qtype = blocks(rng, rows, cols, fmt)
        w.add_tensor(name, data, raw_dtype=qtype)

    def norm(name):
        v = (1.0 + 0.1 * rng.standard_normal(D)).astype(np.float32)
        w.add_tensor(name, v, raw_dtype=GGMLQuantizationType.F32)

    matrix("token_embd.weight", vocab, D)
    for i in range(layers):
        p = f"blk.{i}."
        norm(p + "attn_norm.weight")
        matrix(p + "attn_q.weight", NH * HD, D)
        matrix(p + "attn_k.weight", NKV * HD, D)
        matrix(p + "attn_v.weight", NKV * HD, D)
        matrix(p + "attn_output.weight", D, NH * HD)
        norm(p + "ffn_norm.weight")
        matrix(p + "ffn_gate.weight", F, D)
        matrix(p + "ffn_up.weight", F, D)
        matrix(p + "ffn_down.weight", D, F)
    norm("output_norm.weight")
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    os.replace(dst + ".tmp", dst)
    print(f"{dst}: {os.path.getsize(dst) / 1e9:.2f} GB, {layers} layers, {fmt}, vocabulary {vocab}")


if __name__ == "__main__":
    main()
