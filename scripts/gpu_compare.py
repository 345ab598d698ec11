#!/usr/bin/env python3
"""Compares the outputs of scripts/gpu-check.sh; exits 1 on any failure."""
import json
import sys

fix = json.load(open(sys.argv[1]))
out = sys.argv[2]
load = lambda name: json.load(open(f"{out}/{name}.json"))
failures = []


def check(name, ok, detail):
    print(f"{'ok  ' if ok else 'FAIL'} {name}: {detail}")
    if not ok:
        failures.append(name)


gpu, cpu = load("eval-cuda"), load("eval-cpu")
diff = max(abs(a - b) for a, b in zip(gpu["logprobs"], cpu["logprobs"]))
check("log-probs cuda vs cpu", diff < 1e-3, f"largest |difference| {diff:.2e} over {len(gpu['logprobs'])} tokens")
ref = fix["eval"]["next_logprob"]
diff_ref = max(abs(a - b) for a, b in zip(gpu["logprobs"], ref))
check("log-probs cuda vs transformers", diff_ref < 1e-3, f"largest |difference| {diff_ref:.2e}")
for name in ["eval", "zero", "keep", "random-zero"]:
    g, c = load(f"{name}-cuda"), load(f"{name}-cpu")
    rel = abs(g["perplexity"] / c["perplexity"] - 1)
    check(f"perplexity {name}", rel < 1e-3, f"cuda {g['perplexity']:.4f} cpu {c['perplexity']:.4f} (rel {rel:.1e})")
sg, sc = load("scan-cuda"), load("scan-cpu")
same = (sg["massive_layer"] == sc["massive_layer"]
        and sg["massive_weights"]["dims"] == sc["massive_weights"]["dims"]
        and [(w["layer"], w["row"], w["col"]) for w in sg["super_weights"]] == [(w["layer"], w["row"], w["col"]) for w in sc["super_weights"]]
        and [(a["layer"], a["position"], a["dim"]) for a in sg["massive_activations"]] == [(a["layer"], a["position"], a["dim"]) for a in sc["massive_activations"]])
check("scan cuda vs cpu", same, f"massive layer {sg['massive_layer']}, dims {sg['massive_weights']['dims'][:4]}, super weight {sg['super_weights'][0]}")
pg, pc = load("pair-cuda"), load("pair-cpu")
for row in ["original", "attacked"]:
    same = pg[row]["tokens"] == pc[row]["tokens"]
    check(f"greedy pair {row} cuda vs cpu", same, f"{len(pg[row]['tokens'])} tokens, {pg[row]['text'][:50]!r}")
for i, g in enumerate(fix["generations"]):
    r = load(f"gen-{i}")
    ids = r["tokens"] + ([2] if r["stop"] == "eos" else [])
    check(f"greedy generation {i} vs transformers", ids == g["ids"], f"{len(ids)} tokens, {r['text'][:50]!r}")
sys.exit(1 if failures else 0)
