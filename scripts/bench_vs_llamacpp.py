#!/usr/bin/env python3
"""Prompt and decode tokens/s of mwtop (f32, CPU) next to llama.cpp (dense
F32 GGUF of the same dequantized weights, F32 KV cache, same thread count),
measured in one run, alternating so that both see the same machine.

Usage (from the repo root):
    python3 -m pip install llama-cpp-python gguf numpy
    python3 scripts/bench_vs_llamacpp.py [--threads 2] [--rounds 2]
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def demo_model():
    out = subprocess.run(["cargo", "run", "--release", "-q", "--", "demo"], cwd=ROOT, check=True,
                         capture_output=True, text=True)
    return out.stdout.strip()


def llama_cpp(f32_path, text, threads, decode_n=64):
    from llama_cpp import Llama
    m = Llama(model_path=f32_path, n_ctx=1024, n_threads=threads, n_threads_batch=threads, n_batch=512,
              type_k=0, type_v=0, verbose=False)
    toks = m.tokenize(text.encode(), add_bos=False, special=False)
    times = []
    for _ in range(3):
        m.reset()
        t = time.time()
        m.eval(toks)
        times.append(time.time() - t)
    times.sort()
    m.reset()
    m.eval(toks[:20])
    t = time.time()
    for _ in range(decode_n):
        m.eval([m.sample(temp=0.0)])
    dt = time.time() - t
    return {"prompt_tokens": len(toks), "prompt_tok_s": len(toks) / times[1], "decode_tok_s": decode_n / dt}


def mwtop(threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    out = subprocess.run(["cargo", "run", "--release", "-q", "--", "bench", "--device", "cpu", "--json"], cwd=ROOT,
                         env=env, check=True, capture_output=True, text=True)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    return (
        {"prompt_tok_s": r["prompt_tok_s"], "decode_tok_s": r["decode_tok_s"]},
        {"prompt_tok_s": r["prompt_tok_s_capture"], "decode_tok_s": r["decode_tok_s_capture"]},
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=2)
    args = ap.parse_args()
    src = demo_model()
    f32 = os.path.join(os.path.dirname(src), "SmolLM2-135M-Instruct.F32.gguf")
    if not os.path.exists(f32):
        subprocess.run([sys.executable, os.path.join(HERE, "make_f32_gguf.py"), src, f32], check=True)
    text = open(os.path.join(ROOT, "assets", "eval.txt"), encoding="utf-8").read()
    rows = []
    for r in range(args.rounds):
        rows.append(("llama.cpp F32", llama_cpp(f32, text, args.threads)))
        off, on = mwtop(args.threads)
        rows.append(("mwtop f32, capture off", off))
        rows.append(("mwtop f32, capture on", on))
    print(f"SmolLM2-135M-Instruct, dense f32, {args.threads} threads, eval text, greedy decode of 64 tokens")
    print(f"{'':28} {'prompt tok/s':>13} {'decode tok/s':>13}")
    for name, v in rows:
        print(f"{name:28} {v['prompt_tok_s']:13.1f} {v['decode_tok_s']:13.1f}")


if __name__ == "__main__":
    main()
