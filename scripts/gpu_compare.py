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



def decode_logprobs(what, ra, rb):
    """Decoded tokens' log-probabilities: the issue's 1e-4, where the tokens agree."""
    if ra["tokens"] != rb["tokens"]:
        return
    d = max((abs(x - y) for x, y in zip(ra["logprobs"], rb["logprobs"])), default=0.0)
    check(f"decode log-probs {what}", d < 1e-4, f"largest |difference| {d:.2e} over {len(ra['logprobs'])} tokens")


def decode_states(what, ra, rb):
    """Each generated token's captured states (`generate --states`: every
    layer's largest entries after attention, of the MLP, after the block):
    the largest |value| within 1e-3 (relative, floor 1), and every dim both
    list with values as close, where the tokens agree."""
    if ra["tokens"] != rb["tokens"] or not ra.get("states"):
        return
    worst, n = 0.0, 0
    for ta, tb in zip(ra["states"], rb["states"]):
        for key in ("resid_mid", "mlp_post", "resid_post"):
            for la, lb in zip(ta[key], tb[key]):
                rel = lambda x, y: abs(x - y) / max(abs(y), 1.0)
                worst = max(worst, rel(abs(la[0][1]), abs(lb[0][1])))
                vb = dict((d, v) for d, v in lb)
                for d, v in la:
                    if d in vb:
                        worst = max(worst, rel(v, vb[d]))
                        n += 1
    check(f"decode states {what}", worst < 1e-3 and n > 0,
          f"largest relative difference {worst:.2e} over {n} entries of {len(ra['states'])} tokens")


def scan_key(s):
    return (s["massive_layer"], s["massive_weights"]["dims"],
            [(w["layer"], w["row"], w["col"]) for w in s["super_weights"]],
            [(a["layer"], a["position"], a["dim"]) for a in s["massive_activations"]])


# The GPU's dense f32 copy against the CPU.
ga, gb = load("eval-cuda_f32"), load("eval-cpu")
diff = max(abs(x - y) for x, y in zip(ga["logprobs"], gb["logprobs"]))
check("log-probs cuda --weights f32 vs cpu", diff < 1e-3, f"largest |difference| {diff:.2e}")
pa, pb = load("pair-cuda_f32"), load("pair-cpu")
for row in ["original", "attacked"]:
    check(f"greedy pair {row} cuda --weights f32 vs cpu", pa[row]["tokens"] == pb[row]["tokens"],
          f"{len(pa[row]['tokens'])} tokens")
    decode_logprobs(f"pair {row} cuda --weights f32 vs cpu", pa[row], pb[row])
    decode_states(f"pair {row} cuda --weights f32 vs cpu", pa[row], pb[row])

# Each pair of devices: the GPU against the CPU, and the layers split over
# the GPU and the CPU (cuda:0,cpu) against each of them.
for a, b in [("cuda", "cpu"), ("cuda_0_cpu", "cuda"), ("cuda_0_cpu", "cpu")]:
    what = f"{a} vs {b}".replace("cuda_0_cpu", "split cuda:0,cpu")
    ga, gb = load(f"eval-{a}"), load(f"eval-{b}")
    diff = max(abs(x - y) for x, y in zip(ga["logprobs"], gb["logprobs"]))
    check(f"log-probs {what}", diff < 1e-3, f"largest |difference| {diff:.2e} over {len(ga['logprobs'])} tokens")
    if a == "cuda":
        ref = fix["eval"]["next_logprob"]
        diff_ref = max(abs(x - y) for x, y in zip(ga["logprobs"], ref))
        check("log-probs cuda vs transformers", diff_ref < 1e-3, f"largest |difference| {diff_ref:.2e}")
    for name in ["eval", "zero", "keep", "random-zero"]:
        pa, pb = load(f"{name}-{a}")["perplexity"], load(f"{name}-{b}")["perplexity"]
        rel = abs(pa / pb - 1)
        check(f"perplexity {name} {what}", rel < 1e-3, f"{pa:.4f} vs {pb:.4f} (rel {rel:.1e})")
    sa, sb = load(f"scan-{a}"), load(f"scan-{b}")
    check(f"scan {what}", scan_key(sa) == scan_key(sb),
          f"massive layer {sa['massive_layer']}, dims {sa['massive_weights']['dims'][:4]}, super weight {sa['super_weights'][0]}")
    # The super weights' values: down_proj as each device dequantizes it
    # (on the GPU the file's blocks by mwtop_dequant), to the bit.
    va = [w["value"] for w in sa["super_weights"]]
    vb = [w["value"] for w in sb["super_weights"]]
    check(f"super weight values {what}", va == vb and len(va) > 0, f"{len(va)} values, first {va[:2]}")
    pa, pb = load(f"pair-{a}"), load(f"pair-{b}")
    for row in ["original", "attacked"]:
        check(f"greedy pair {row} {what}", pa[row]["tokens"] == pb[row]["tokens"],
              f"{len(pa[row]['tokens'])} tokens, {pa[row]['text'][:50]!r}")
        decode_logprobs(f"pair {row} {what}", pa[row], pb[row])
        decode_states(f"pair {row} {what}", pa[row], pb[row])


for i, g in enumerate(fix["generations"]):
    r = load(f"gen-{i}")
    ids = r["tokens"] + ([2] if r["stop"] == "eos" else [])
    check(f"greedy generation {i} vs transformers", ids == g["ids"], f"{len(ids)} tokens, {r['text'][:50]!r}")
    decode_logprobs(f"generation {i} cuda vs cpu", r, load(f"gen-{i}-cpu"))
    decode_states(f"generation {i} cuda vs cpu", r, load(f"gen-{i}-cpu"))
sys.exit(1 if failures else 0)
