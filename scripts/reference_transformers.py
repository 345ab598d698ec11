#!/usr/bin/env python3
"""Reference outputs from Hugging Face transformers (an implementation nobody
here wrote), for tests/fixtures/smollm2_transformers_reference.json and
tests/fixtures/gemma3_transformers_reference.json.

Runs on the GPU machine (torch + transformers there; carry the `gguf` wheel):
    python3 scripts/reference_transformers.py MODEL.gguf assets/eval.txt OUT.json

transformers reads the GGUF itself (its own dequantization, q/k un-permutation
and tokenizer conversion). Everything is fp32 with TF32 off.

Recorded: tokenizer ids for tricky strings; for the evaluation text, per
position the argmax, max logit, log-sum-exp and next-token log-prob, plus full
logit probes at a few positions; perplexity; greedy generations; per-layer
massive-activation statistics; the d_ff intermediate state at the BOS position;
and perplexities with the House-of-Cards attacks applied by physically zeroing
rows of W_up and W_gate (the paper's definition).
"""
import json
import math
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

TOKENIZER_CASES = [
    "In 2024, the price rose 12.5% to $1,234,567.89!",
    "Hello   world\t\ttabs\n\nnew  lines",
    "naïve café — 東京 🚀 emoji",
    "    leading spaces and trailing   ",
    "x=3.14159; y=-2e10; z=[1,2,3]",
    "Don't won't I'm you're they'll",
]
GEN_PROMPTS = [
    {"prompt": "What is the capital of France?", "chat": True},
    {"prompt": "Write a short poem about the sea.", "chat": True},
    {"prompt": "The history of the printing press", "chat": False},
]
PROBE = "Summer is warm. Winter is cold."
LOGIT_POSITIONS = [0, 1, 2, 50, 200, -1]


def main():
    gguf_path, text_path, out_path = sys.argv[1:4]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    d, f = os.path.dirname(os.path.abspath(gguf_path)), os.path.basename(gguf_path)
    t0 = time.time()
    tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, torch_dtype=torch.float32).to(dev).eval()
    print(f"loaded in {time.time() - t0:.1f}s on {dev}", flush=True)
    cfg = model.config
    # Every 193rd id of SmolLM2's 49,152; the same spread over a larger vocabulary.
    probe_ids_step = 193 if cfg.vocab_size <= 49152 else cfg.vocab_size // 255
    PROBE_IDS = list(range(0, cfg.vocab_size, probe_ids_step))
    out = {"source": f"transformers {__import__('transformers').__version__}, torch {torch.__version__}, {dev}, fp32",
           "tokenizer": [], "generations": []}

    for s in TOKENIZER_CASES:
        out["tokenizer"].append({"text": s, "ids": tok(s, add_special_tokens=False)["input_ids"]})

    text = open(text_path, encoding="utf-8").read()
    ids = tok(text, add_special_tokens=False)["input_ids"]
    out["eval_ids"] = ids
    with torch.no_grad():
        logits = model(torch.tensor([ids], device=dev)).logits[0].double()
    lse = torch.logsumexp(logits, -1)
    nxt = torch.tensor(ids[1:], device=dev)
    lp = (logits[:-1].gather(1, nxt[:, None])[:, 0] - lse[:-1])
    out["eval"] = {
        "argmax": logits.argmax(-1).tolist(),
        "max_logit": logits.max(-1).values.tolist(),
        "logsumexp": lse.tolist(),
        "next_logprob": lp.tolist(),
        "perplexity": math.exp(-lp.mean().item()),
        "probe_ids": PROBE_IDS,
        "probes": {str(p % len(ids)): logits[p, PROBE_IDS].tolist() for p in LOGIT_POSITIONS},
    }
    print("ppl", out["eval"]["perplexity"], flush=True)

    for g in GEN_PROMPTS:
        if g["chat"] and tok.chat_template is None:
            continue  # a base model without a chat template
        if g["chat"]:
            rendered = tok.apply_chat_template([{"role": "user", "content": g["prompt"]}], tokenize=False,
                                               add_generation_prompt=True)
        else:
            rendered = g["prompt"]
        p_ids = tok(rendered, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            gen = model.generate(torch.tensor([p_ids], device=dev), max_new_tokens=48, do_sample=False,
                                 eos_token_id=cfg.eos_token_id, pad_token_id=cfg.eos_token_id)
        new = gen[0, len(p_ids):].tolist()
        out["generations"].append({**g, "rendered": rendered, "prompt_ids": p_ids, "ids": new,
                                   "text": tok.decode(new, skip_special_tokens=True)})

    # Massive activations on a BOS-first probe.
    bos = cfg.bos_token_id
    probe_ids = [bos] + tok(PROBE, add_special_tokens=False)["input_ids"]
    layers = model.model.layers
    inter = {}

    def grab(i):
        def hook(_m, args):
            inter[i] = args[0][0].detach().double()
        return hook

    hs = [layers[i].mlp.down_proj.register_forward_pre_hook(grab(i)) for i in range(len(layers))]
    with torch.no_grad():
        res = model(torch.tensor([probe_ids], device=dev), output_hidden_states=True)
    for h in hs:
        h.remove()
    stats = []
    massive_layer = None
    for i in range(len(layers) - 1):  # the last hidden state has the final norm applied
        x = res.hidden_states[i + 1][0].double()
        a = x.abs()
        med = a.median(dim=-1).values  # torch: lower median
        mx, flat = a.reshape(-1).max(0)
        pos, dim = divmod(flat.item(), a.shape[1])
        massive = ((a > 100) & (a >= 1000 * med[:, None])).any().item()
        if massive and massive_layer is None:
            massive_layer = i
        ratio = (a / med[:, None]).max().item()
        stats.append({"layer": i, "max_abs": mx.item(), "position": pos, "dim": dim,
                      "value": x[pos, dim].item(), "median_at_position": med[pos].item(),
                      "max_ratio": ratio, "massive": bool(massive)})
        print(stats[-1], flush=True)
    top = {}
    for i in range(len(layers)):
        v = inter[i][0]
        vals, idx = v.abs().topk(8)
        top[str(i)] = {"dims": idx.tolist(), "values": v[idx].tolist()}
    out["probe"] = {"ids": probe_ids, "resid_post": stats, "massive_layer": massive_layer, "mlp_post_bos_top8": top}
    print("massive layer", massive_layer, flush=True)

    # House of Cards: physically zero rows of W_up/W_gate of the massive layer.
    bos_ids = [bos] + ids
    # Without a layer meeting Sun et al.'s thresholds, attack the first layer whose
    # largest |activation| reaches half of the largest over all layers.
    top_abs = max(st["max_abs"] for st in stats)
    L = massive_layer if massive_layer is not None else next(st["layer"] for st in stats if st["max_abs"] >= 0.5 * top_abs)
    dims_all = top[str(L)]["dims"]
    mlp = layers[L].mlp
    up0, gate0 = mlp.up_proj.weight.data.clone(), mlp.gate_proj.weight.data.clone()

    def ppl():
        with torch.no_grad():
            lg = model(torch.tensor([bos_ids], device=dev)).logits[0].double()
        lp = torch.log_softmax(lg[:-1], -1).gather(1, torch.tensor(bos_ids[1:], device=dev)[:, None])
        return math.exp(-lp.mean().item())

    attacks = [{"mode": "original", "k": 0, "dims": [], "perplexity": ppl()}]
    for mode in ["zero", "keep"]:
        for k in ([0, 1, 2, 4, 8] if mode == "keep" else [1, 2, 4, 8]):
            dims = dims_all[:k]
            keep = torch.zeros(up0.shape[0], device=dev, dtype=up0.dtype) if mode == "keep" else torch.ones(up0.shape[0], device=dev, dtype=up0.dtype)
            keep[dims] = 1.0 if mode == "keep" else 0.0
            mlp.up_proj.weight.data = up0 * keep[:, None]
            mlp.gate_proj.weight.data = gate0 * keep[:, None]
            attacks.append({"mode": mode, "k": k, "dims": dims, "perplexity": ppl()})
            mlp.up_proj.weight.data, mlp.gate_proj.weight.data = up0.clone(), gate0.clone()
    out["attacks"] = {"layer": L, "text": "eval text with BOS first", "runs": attacks}
    print(json.dumps(attacks), flush=True)

    with open(out_path, "w") as fh:
        json.dump(out, fh, indent=None, separators=(",", ":"))
        fh.write("\n")


if __name__ == "__main__":
    main()
