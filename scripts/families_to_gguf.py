#!/usr/bin/env python3
"""GGUF files of the tiny family fixtures, written with llama.cpp's own
gguf-py (its tensor-name map and metadata keys, and the value conventions
of llama.cpp's converter: Gemma norms stored as 1 + w, Phi-3's fused
tensors kept, F32 everywhere), then checked by llama.cpp itself
(llama-cpp-python): its log-probs must equal transformers' before a file
is kept. Writes FIXTURES/<family>/model.gguf and llamacpp.json.

    pip install gguf==0.19.0 llama-cpp-python==0.3.36 safetensors numpy
    python3 scripts/families_to_gguf.py tests/fixtures/families [FAMILY...]
"""
import json
import math
import os
import sys

import gguf
import llama_cpp
import numpy as np
from safetensors.numpy import load_file

ARCH = {
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "olmo2": gguf.MODEL_ARCH.OLMO2,
    "gemma2": gguf.MODEL_ARCH.GEMMA2,
    "phi3": gguf.MODEL_ARCH.PHI3,
}
# Not here: Gemma 3, whose sliding pattern llama.cpp hard-codes (every 6th
# layer global), which the 3-layer fixture does not follow (the real Gemma 3
# 270M GGUF is tested instead). The files' general.name must not contain
# "phi3": llama.cpp then looks up Phi-3's chat tokens by text, which the
# fixtures' byte-level vocabulary lacks (unordered_map::at).


def tensors(path):
    out = {}
    for f in sorted(os.listdir(path)):
        if f.endswith(".safetensors"):
            out.update(load_file(os.path.join(path, f)))
    return out


def write(family, path):
    cfg = json.load(open(os.path.join(path, "config.json")))
    arch = ARCH[family]
    name = gguf.MODEL_ARCH_NAMES[arch]
    out = os.path.join(path, "model.gguf")
    w = gguf.GGUFWriter(out, name)
    n_layers = cfg["num_hidden_layers"]
    hd = cfg["head_dim"]
    w.add_name("mwtop tiny fixture")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(n_layers)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    rp = cfg["rope_parameters"]
    w.add_rope_freq_base(rp["rope_theta"])
    partial = rp.get("partial_rotary_factor", 1.0)
    if partial != 1.0:
        w.add_rope_dimension_count(int(hd * partial))
    if family == "gemma2":
        w.add_sliding_window(cfg["sliding_window"])
    if family == "gemma2":
        w.add_attn_logit_softcapping(cfg["attn_logit_softcapping"])
        w.add_final_logit_softcapping(cfg["final_logit_softcapping"])
    # The byte-level vocabulary of the fixtures' tokenizer.json.
    tok = json.load(open(os.path.join(path, "tokenizer.json")))
    vocab = tok["model"]["vocab"]
    tokens = [None] * cfg["vocab_size"]
    for piece, i in vocab.items():
        tokens[i] = piece
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for i, t in enumerate(tokens):
        if t is None:
            tokens[i] = f"<unused{i}>"
            types[i] = gguf.TokenType.UNUSED
        elif t.startswith("<") and t.endswith(">") and i >= 256:
            types[i] = gguf.TokenType.CONTROL
    # llama.cpp refuses a BPE vocabulary without merges: one merge into the
    # unused slot 259 (two spaces), which the test texts never contain.
    tokens[259] = "\u0120\u0120"
    types[259] = gguf.TokenType.NORMAL
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(["\u0120 \u0120"])
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    w.add_add_bos_token(False)
    names = gguf.get_tensor_name_map(arch, n_layers)
    gemma = family.startswith("gemma")
    for hf, data in tensors(path).items():
        if cfg.get("tie_word_embeddings") and hf == "lm_head.weight":
            continue
        new = names.get_name(hf, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SystemExit(f"{family}: no GGUF name for {hf}")
        data = data.astype(np.float32)
        if gemma and hf.endswith("norm.weight"):
            data = data + 1.0  # llama.cpp's converter stores Gemma's 1 + w
        w.add_tensor(new, data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out


def llamacpp_logprobs(model, ids):
    # F32 keys and values: llama.cpp caches them as F16 by default.
    llm = llama_cpp.Llama(model_path=model, n_ctx=256, logits_all=True, verbose=False, n_threads=2,
                          type_k=0, type_v=0)
    llm.eval(ids)
    logits = np.array(llm.scores[: len(ids)], dtype=np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    return [float(logits[p, ids[p + 1]] - lse[p]) for p in range(len(ids) - 1)]


def main():
    root = sys.argv[1]
    for family in sys.argv[2:] or ARCH:
        path = os.path.join(root, family)
        ref = json.load(open(os.path.join(path, "reference.json")))
        model = write(family, path)
        ids = ref["bos_ids"]
        try:
            lp = llamacpp_logprobs(model, ids)
        except ValueError as e:
            # A file llama.cpp cannot load proves nothing: not kept.
            os.remove(model)
            print(f"{family}: llama.cpp cannot load it ({e}); not kept", flush=True)
            continue
        worst = max(abs(a - b) for a, b in zip(lp, ref["logprobs_bos"]))
        print(f"{family}: llama.cpp vs transformers, worst log-prob difference {worst:.2e}", flush=True)
        json.dump({"source": f"llama-cpp-python {llama_cpp.__version__}", "bos_ids": ids,
                   "logprobs_bos": lp, "worst_vs_transformers": worst},
                  open(os.path.join(path, "llamacpp.json"), "w"), indent=1)


if __name__ == "__main__":
    main()
