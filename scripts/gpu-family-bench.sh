#!/usr/bin/env bash
# Decode speed per parameter of every family at one size, on the GPU
# machine with a `--features cuda` build: scripts/bench_family_models.py
# writes same-shape random models with transformers, `mwtop bench` times
# each (f32, CUDA graphs), and a table compares each family's time per
# token per parameter with Llama's.
# Usage: scripts/gpu-family-bench.sh MWTOP_BINARY OUTDIR [MODELDIR]
set -euo pipefail
BIN=$1; OUT=$2; MODELS=${3:-/tmp/family-bench-models}
mkdir -p "$OUT" "$MODELS"
python3 scripts/bench_family_models.py "$MODELS" | tee "$OUT/models.txt"
for d in "$MODELS"/*/; do
  f=$(basename "$d")
  "$BIN" bench "$d" --device cuda --decode 128 --json > "$OUT/$f.json"
done
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = {}
for name in sorted(os.listdir(out)):
    if name.endswith(".json"):
        rows[name[:-5]] = json.load(open(os.path.join(out, name)))
def ps(r):
    return 1e12 / r["decode_tok_s"] / r["parameters"]
base = ps(rows["llama"])
print("| family | parameters | decode tok/s | per token per parameter | vs llama |")
print("|---|---|---|---|---|")
for f, r in rows.items():
    print(f"| {f} | {r['parameters'] / 1e6:.1f}M | {r['decode_tok_s']:.1f} | {ps(r):.2f} ps | {100 * (ps(r) / base - 1):+.1f}% |")
PY
