"""The sweep's peer (issue 16, item 4): the 26 perplexity runs of
`mwtop eval --sweep` done again by Hugging Face transformers on the same
GPU, each attack applied as the paper defines it (rows of W_up and W_gate
of the attacked layer zeroed, or all but them), on the same token ids
(BOS first). Prints every run's perplexity next to mwtop's (their largest
relative difference) and the time of the 26 runs on each side: mwtop's
`seconds` from its JSON (the runs alone, as here, after loading).

Usage (on the GPU machine, the `gguf` wheel on PYTHONPATH):
    mwtop eval MODEL.gguf --text assets/eval.txt --bos --sweep --json > sweep.json
    python3 scripts/bench_sweep.py MODEL.gguf assets/eval.txt sweep.json
"""
import json
import math
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer


def main():
    gguf_path, text_path, sweep_path = sys.argv[1:4]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda"
    d, f = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).to(dev).eval()
    sweep = json.load(open(sweep_path))
    text = open(text_path, encoding="utf-8").read()
    ids = [model.config.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
    if len(ids) != sweep["tokens"]:
        sys.exit(f"{len(ids)} token ids here, mwtop scored {sweep['tokens']}")
    x = torch.tensor([ids], device=dev)
    target = torch.tensor(ids[1:], device=dev)[:, None]
    mlp = model.model.layers[sweep["layer"]].mlp
    up0, gate0 = mlp.up_proj.weight.data.clone(), mlp.gate_proj.weight.data.clone()
    d_ff = up0.shape[0]

    def ppl():
        with torch.no_grad():
            lg = model(x).logits[0]
        lp = torch.log_softmax(lg[:-1].double(), -1).gather(1, target)
        return math.exp(-lp.mean().item())

    ppl()  # CUDA start-up and first-call work, untimed
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    got = []
    for run in sweep["runs"]:
        mode, dims = run["mode"], run["dims"]
        if mode == "original":
            mask = torch.ones(d_ff, device=dev)
        elif mode in ("zero", "random-zero"):
            mask = torch.ones(d_ff, device=dev)
            mask[dims] = 0.0
        elif mode in ("keep", "random-keep"):
            mask = torch.zeros(d_ff, device=dev)
            mask[dims] = 1.0
        else:
            sys.exit(f"mode {mode}: not a sweep mode")
        mlp.up_proj.weight.data = up0 * mask[:, None]
        mlp.gate_proj.weight.data = gate0 * mask[:, None]
        got.append(ppl())
    torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    mlp.up_proj.weight.data, mlp.gate_proj.weight.data = up0, gate0
    worst = max(abs(a / r["perplexity"] - 1) for a, r in zip(got, sweep["runs"]))
    for a, r in zip(got, sweep["runs"]):
        print(f"  {r['mode']:>11} k={r['k']:>2}: mwtop {r['perplexity']:.4f}, transformers {a:.4f}")
    print(f"sweep ({len(got)} runs x {len(ids)} tokens, layer {sweep['layer']}): perplexities within "
          f"{worst:.1e} (relative); mwtop {sweep['seconds']:.3f} s, transformers {seconds:.3f} s: "
          f"{seconds / sweep['seconds']:.1f}x")
    sys.exit(0 if worst < 1e-3 else 1)


if __name__ == "__main__":
    main()
