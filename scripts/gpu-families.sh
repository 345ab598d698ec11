#!/usr/bin/env bash
# Every family on the GPU, run on the GPU machine with a `--features cuda`
# build: for each tiny fixture of tests/fixtures/families (and its GGUF file
# where one exists) the log-probs of a text longer than the sliding window on
# CUDA against the CPU and against transformers' reference, and a greedy
# continuation (cached, CUDA graphs) against the CPU, its tokens'
# log-probabilities within 1e-4 and the states it captures (`--states`)
# within 1e-3. Prints one line per
# check and exits 1 on a failure.
# Usage: scripts/gpu-families.sh MWTOP_BINARY OUTDIR
set -euo pipefail
BIN=$1; OUT=$2
mkdir -p "$OUT"
ROOT=tests/fixtures/families
TEXT="$OUT/text.txt"
python3 -c "import json; print(json.load(open('$ROOT/mistral/reference.json'))['text'], end='')" > "$TEXT"
for d in "$ROOT"/*/; do
  f=$(basename "$d")
  models=("$d")
  if [ -f "$d/model.gguf" ]; then models+=("$d/model.gguf"); fi
  for model in "${models[@]}"; do
    tag=$f
    if [ "${model##*.}" = gguf ]; then tag=$f-gguf; fi
    for dev in cuda cpu; do
      "$BIN" eval "$model" --text "$TEXT" --bos --per-token --device "$dev" --json > "$OUT/$tag-eval-$dev.json"
      "$BIN" generate "$model" --prompt "Summer is warm" --max-tokens 24 --no-stop --device "$dev" --json --states > "$OUT/$tag-gen-$dev.json"
    done
  done
done
python3 - "$ROOT" "$OUT" <<'PY'
import json, os, sys
root, out = sys.argv[1:3]
bad = []
for name in sorted(os.listdir(out)):
    if not name.endswith("-eval-cuda.json"):
        continue
    tag = name[: -len("-eval-cuda.json")]
    fam = tag.removesuffix("-gguf")
    g = json.load(open(f"{out}/{tag}-eval-cuda.json"))
    c = json.load(open(f"{out}/{tag}-eval-cpu.json"))
    ref = json.load(open(f"{root}/{fam}/reference.json"))["logprobs_bos"]
    d_cpu = max(abs(a - b) for a, b in zip(g["logprobs"], c["logprobs"]))
    d_ref = max(abs(a - b) for a, b in zip(g["logprobs"], ref))
    rg = json.load(open(f"{out}/{tag}-gen-cuda.json"))
    rc = json.load(open(f"{out}/{tag}-gen-cpu.json"))
    gg, gc = rg["tokens"], rc["tokens"]
    # The decoded tokens' log-probabilities: the replayed step's kernels.
    d_dec = max(abs(a - b) for a, b in zip(rg["logprobs"], rc["logprobs"]))
    # The states captured as it decodes: each layer's largest |value|.
    d_st = max((abs(abs(la[0][1]) - abs(lb[0][1])) / max(abs(lb[0][1]), 1.0)
                for ta, tb in zip(rg["states"], rc["states"])
                for key in ("resid_mid", "mlp_post", "resid_post")
                for la, lb in zip(ta[key], tb[key])), default=1.0)
    ok = d_cpu < 1e-4 and d_ref < 1e-4 and gg == gc and d_dec < 1e-4 and d_st < 1e-3
    print(f"{'ok  ' if ok else 'FAIL'} {tag}: cuda vs cpu {d_cpu:.1e}, vs transformers {d_ref:.1e}, greedy {'equal' if gg == gc else 'DIFFERS'} ({len(gg)} tokens, decode log-probs {d_dec:.1e}, states {d_st:.1e})")
    if not ok:
        bad.append(tag)
sys.exit(1 if bad else 0)
PY
