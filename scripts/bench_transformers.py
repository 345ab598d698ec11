#!/usr/bin/env python3
"""Hugging Face transformers on the same GPU, as a peer for `mwtop bench`:
prompt tokens/s (one forward over the evaluation text) and decode tokens/s
(`generate`, greedy, 64 new tokens after a 20-token start), fp32 and bf16.
Usage: python3 scripts/bench_transformers.py MODEL.gguf assets/eval.txt
Prints one JSON line per dtype.
"""
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    path, text_path = sys.argv[1], sys.argv[2]
    d, f = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    torch.backends.cuda.matmul.allow_tf32 = False
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    ids = [tok.bos_token_id] + tok(open(text_path).read(), add_special_tokens=False)["input_ids"]
    for dtype in [torch.float32, torch.bfloat16]:
        model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=dtype).to("cuda").eval()
        x = torch.tensor([ids], device="cuda")
        with torch.no_grad():
            model(x)
            torch.cuda.synchronize()
            best = 1e9
            for _ in range(3):
                t = time.time()
                model(x)
                torch.cuda.synchronize()
                best = min(best, time.time() - t)
            start = x[:, :20]
            model.generate(start, max_new_tokens=8, do_sample=False, pad_token_id=2, eos_token_id=None)
            torch.cuda.synchronize()
            t = time.time()
            out = model.generate(start, max_new_tokens=64, min_new_tokens=64, do_sample=False, pad_token_id=2, eos_token_id=None)
            torch.cuda.synchronize()
            dt = time.time() - t
        print(json.dumps({"peer": "transformers", "dtype": str(dtype).replace("torch.", ""),
                          "prompt_tokens": len(ids), "prompt_tok_s": len(ids) / best,
                          "decode_tokens": out.shape[1] - 20, "decode_tok_s": (out.shape[1] - 20) / dt}), flush=True)
        del model
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
