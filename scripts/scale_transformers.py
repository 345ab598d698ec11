#!/usr/bin/env python3
"""The transformers side of scripts/gpu-scale.sh, on the same checkpoint:
load time (bf16 to the GPU), greedy decode speed in bf16 (its native
precision), peak GPU memory, and the perplexity of a text in fp32 on the
bf16 weights upcast (what mwtop computes with `--weights stored`). Prints
one JSON object.

    python3 scripts/scale_transformers.py MODELDIR TEXTFILE PROMPT_TOKENS DECODE
"""
import json
import math
import os
import sys
import time

import torch
import transformers
from tokenizers import Tokenizer

# DEVICE_MAP=auto spreads the layers over every GPU (the split run);
# FP32_SCORING=0 skips the perplexity, whose fp32 copy would not fit then.
DEVICE_MAP = os.environ.get("DEVICE_MAP", "cuda")
FP32_SCORING = os.environ.get("FP32_SCORING", "1") != "0"


def main():
    path, text_file = sys.argv[1], sys.argv[2]
    prompt_n, decode_n = int(sys.argv[3]), int(sys.argv[4])
    tok = Tokenizer.from_file(f"{path}/tokenizer.json")
    config = json.load(open(f"{path}/config.json"))
    bos = config["bos_token_id"]
    torch.cuda.synchronize()
    t = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.bfloat16, device_map=DEVICE_MAP).eval()
    torch.cuda.synchronize()
    load = time.perf_counter() - t
    text = open(text_file).read()
    ids = [bos] + tok.encode(text).ids
    prompt = torch.tensor([ids[:prompt_n]], device=model.device)
    with torch.no_grad():
        model.generate(prompt, max_new_tokens=4, do_sample=False)  # warm-up
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = model.generate(prompt, max_new_tokens=decode_n, min_new_tokens=decode_n,
                             do_sample=False)
        torch.cuda.synchronize()
        gen = time.perf_counter() - t
    peak_bf16 = torch.cuda.max_memory_allocated()
    peaks = [torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())]
    if not FP32_SCORING:  # a model split over GPUs has no room for an fp32 copy
        print(json.dumps({"load_seconds": load, "decode_tokens": out.shape[1] - prompt.shape[1],
                          "decode_tok_s": (out.shape[1] - prompt.shape[1]) / gen,
                          "peak_gpu_bytes_bf16": peak_bf16, "peak_gpu_bytes_per_gpu": peaks}))
        return
    # Perplexity in fp32 on the upcast weights.
    model = model.float()
    with torch.no_grad():
        x = torch.tensor([ids], device="cuda")
        logits = model(x).logits[0, :-1].float()
        nll = torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
    print(json.dumps({
        "load_seconds": load,
        "decode_tokens": out.shape[1] - prompt.shape[1],
        "decode_tok_s": (out.shape[1] - prompt.shape[1]) / gen,
        "peak_gpu_bytes_bf16": peak_bf16,
        "scored_tokens": len(ids) - 1,
        "perplexity_fp32": math.exp(nll / (len(ids) - 1)),
    }))


if __name__ == "__main__":
    main()
