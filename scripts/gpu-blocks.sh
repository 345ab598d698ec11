#!/usr/bin/env bash
# GGUF blocks on the GPU, run on the GPU machine with a `--features cuda`
# build: for each block format mwtop keeps as blocks (the planted tiny model
# quantized to it by `cargo run --example write_planted -- FILE TYPE`, made
# where Rust is and carried), CUDA (the default `--weights stored`: the
# matrices stay blocks; prompts dequantize them per product with
# mwtop_dequant, decode steps read them in mwtop_gemvq) against the CPU (the
# blocks converted to f32 at load by candle):
#   - the massive weights `scan` reports (values of down_proj dequantized on
#     each device) identical to the bit;
#   - log-probs of a text within 1e-4;
#   - a greedy continuation and the original+attacked pair (one replayed
#     graph of two rows, the keep-only mask applied in the GEMV's staged
#     input) with the same tokens, their log-probs within 1e-4 and the
#     captured states within 1e-3.
# Prints one line per format and exits 1 on a failure.
# Usage: scripts/gpu-blocks.sh MWTOP_BINARY DIR_OF_planted-TYPE.gguf OUTDIR
set -euo pipefail
BIN=$1; DIR=$2; OUT=$3
mkdir -p "$OUT"
TEXT=assets/eval.txt
for f in "$DIR"/planted-*.gguf; do
  tag=$(basename "$f" .gguf)
  for dev in cuda cpu; do
    "$BIN" eval "$f" --text "$TEXT" --bos --per-token --device "$dev" --json > "$OUT/$tag-eval-$dev.json"
    "$BIN" scan "$f" --device "$dev" --json > "$OUT/$tag-scan-$dev.json"
    "$BIN" generate "$f" --prompt "Summer is warm" --max-tokens 24 --no-stop --device "$dev" \
      --json --states > "$OUT/$tag-gen-$dev.json"
    "$BIN" generate "$f" --prompt "The capital of France is" --compare --mode keep --k 2 \
      --max-tokens 16 --no-stop --device "$dev" --json --states > "$OUT/$tag-pair-$dev.json"
  done
done
python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
load = lambda n: json.load(open(f"{out}/{n}.json"))
bad = []

def decoded(ra, rb):
    """(tokens equal, decode log-prob difference, states' relative difference)"""
    if ra["tokens"] != rb["tokens"]:
        return False, float("inf"), float("inf")
    d = max((abs(x - y) for x, y in zip(ra["logprobs"], rb["logprobs"])), default=0.0)
    s = max((abs(abs(la[0][1]) - abs(lb[0][1])) / max(abs(lb[0][1]), 1.0)
             for ta, tb in zip(ra["states"], rb["states"])
             for key in ("resid_mid", "mlp_post", "resid_post")
             for la, lb in zip(ta[key], tb[key])), default=1.0)
    return True, d, s

for name in sorted(os.listdir(out)):
    if not name.endswith("-eval-cuda.json"):
        continue
    tag = name[: -len("-eval-cuda.json")]
    g, c = load(f"{tag}-eval-cuda"), load(f"{tag}-eval-cpu")
    d_eval = max(abs(a - b) for a, b in zip(g["logprobs"], c["logprobs"]))
    sg, sc = load(f"{tag}-scan-cuda"), load(f"{tag}-scan-cpu")
    weights = lambda s: [(w["layer"], w["row"], w["col"], w["value"]) for w in s["super_weights"]]
    same_weights = weights(sg) == weights(sc) and len(weights(sg)) > 0
    eq1, d1, s1 = decoded(load(f"{tag}-gen-cuda"), load(f"{tag}-gen-cpu"))
    pg, pc = load(f"{tag}-pair-cuda"), load(f"{tag}-pair-cpu")
    rows = [decoded(pg[r], pc[r]) for r in ("original", "attacked")]
    eq = eq1 and all(r[0] for r in rows)
    d_dec = max([d1] + [r[1] for r in rows])
    d_st = max([s1] + [r[2] for r in rows])
    ok = same_weights and d_eval < 1e-4 and eq and d_dec < 1e-4 and d_st < 1e-3
    print(f"{'ok  ' if ok else 'FAIL'} {tag}: massive weights {'identical' if same_weights else 'DIFFER'} "
          f"({len(weights(sg))}, first {weights(sg)[:1]}), log-probs {d_eval:.1e}, "
          f"greedy and pair {'equal' if eq else 'DIFFER'} (decode log-probs {d_dec:.1e}, states {d_st:.1e})")
    if not ok:
        bad.append(tag)
sys.exit(1 if bad else 0)
PY
