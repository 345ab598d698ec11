#!/usr/bin/env python3
"""mwtop's per-request scores (`tasks --per-request --json`) against
transformers' (scripts/reference_tasks.py reference): token ids, the
continuation start, log-likelihoods (within 1e-3) and each question's
predicted choice (equal unless its two best choices lie within 1e-4).
Exits 1 on a difference.

    compare_tasks.py MWTOP.json TRANSFORMERS.json
"""
import json
import sys

mw = json.load(open(sys.argv[1]))
ref = json.load(open(sys.argv[2]))
theirs = {(r["task"], r["doc_id"], r["choice"]): r for r in ref["requests"]}
bad, worst, n = [], 0.0, 0
questions = {}
for t in mw["tasks"]:
    for r in t["requests"]:
        key = (t["task"], r["doc_id"], r["choice"])
        o = theirs[key]
        n += 1
        if r["ids"] != o["ids"] or r["cont_start"] != o["cont_start"]:
            bad.append(f"{key}: tokens differ")
        d = abs(r["loglik"] - o["loglik"])
        worst = max(worst, d)
        if d > 1e-3:
            bad.append(f"{key}: loglik {r['loglik']:.6f} vs {o['loglik']:.6f}")
        questions.setdefault(key[:2], []).append((r["loglik"], o["loglik"]))
flips = 0
for key, pairs in questions.items():
    a = max(range(len(pairs)), key=lambda i: (pairs[i][0], -i))
    b = max(range(len(pairs)), key=lambda i: (pairs[i][1], -i))
    if a != b:
        top = sorted(p[1] for p in pairs)[-2:]
        if top[1] - top[0] >= 1e-4:
            bad.append(f"{key}: predicted {a} vs {b}")
        flips += 1
print(f"{n} requests, {len(questions)} questions: worst log-likelihood difference {worst:.2e}, "
      f"{flips} predictions differ (ties within 1e-4 allowed)")
for b in bad[:20]:
    print("FAIL", b)
sys.exit(1 if bad else 0)
