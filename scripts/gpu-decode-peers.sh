#!/usr/bin/env bash
# The speed issue's decode peers, in one call on the GPU machine: mwtop's
# `bench` (decode with CUDA graphs, eager, captures on, the A/B pair) with
# dense f32 weights (`--weights f32`) and with the file's blocks held as
# they are (`--weights stored`, the GPU default), next to llama.cpp's own
# `llama-bench` (a CUDA build from source, CUDA graphs on, every layer on
# the GPU) on the F32 GGUF of the same weights and on the Q4_1 file
# itself, and transformers fp32.
# llama-bench's tg128 is 128 generated tokens after an empty prompt; mwtop's
# decode is 128 tokens after a 20-token start. Each run writes its own file.
# Usage: scripts/gpu-decode-peers.sh MWTOP LLAMA_BENCH MODEL_Q4_1.gguf OUTDIR
#   (python3 with the gguf package for the F32 copy; scripts/make_f32_gguf.py)
set -euo pipefail
BIN=$1; LB=$2; Q=$3; OUT=$4
mkdir -p "$OUT"
F32=${F32_GGUF:-/tmp/model-f32.gguf}
[ -f "$F32" ] || python3 scripts/make_f32_gguf.py "$Q" "$F32"
# Warm the driver's kernel cache first, so no figure pays for it.
"$BIN" generate "$Q" --prompt "warm up" --max-tokens 4 --device cuda --json > /dev/null
for round in 1 2; do
  "$BIN" bench "$Q" --device cuda --dtype f32 --weights f32 --decode 128 --json > "$OUT/mwtop-$round.json"
  "$BIN" bench "$Q" --device cuda --dtype f32 --weights stored --decode 128 --json > "$OUT/mwtop-blocks-$round.json"
  for m in f32:"$F32" q4_1:"$Q"; do
    name=${m%%:*}; file=${m#*:}
    "$LB" -m "$file" -ngl 99 -p 0 -n 128 -r 5 -o json > "$OUT/llamacpp-$name-$round.json" 2> "$OUT/llamacpp-$name-$round.log"
  done
done
python3 scripts/bench_transformers.py "$Q" assets/eval.txt > "$OUT/transformers.json" 2> "$OUT/transformers.log" || true
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def lb(name):
    rows = json.load(open(f"{out}/{name}.json"))
    tg = [r for r in rows if r.get("n_gen", 0) > 0]
    return tg[0]["avg_ts"], tg[0].get("backends", ""), tg[0].get("flash_attn", "")
for r in (1, 2):
    m = json.load(open(f"{out}/mwtop-{r}.json"))
    f32, be, fa = lb(f"llamacpp-f32-{r}")
    q4, _, _ = lb(f"llamacpp-q4_1-{r}")
    print(f"round {r}: mwtop f32 decode {m['decode_tok_s']:.1f} tok/s (eager {m['decode_tok_s_eager']:.1f}, "
          f"captures on {m['decode_tok_s_capture']:.1f}, pair {m['decode_tok_s_pair']:.1f} per row); "
          f"llama.cpp ({be}, flash_attn {fa}) F32 {f32:.1f}, Q4_1 {q4:.1f} tok/s")
    print(f"  mwtop / llama.cpp F32: captures off {m['decode_tok_s'] / f32:.2f}x, "
          f"captures on {m['decode_tok_s_capture'] / f32:.2f}x; captures on / off "
          f"{m['decode_tok_s_capture'] / m['decode_tok_s']:.2f}; pair per row / single "
          f"{m['decode_tok_s_pair'] / m['decode_tok_s']:.2f}")
    q = json.load(open(f"{out}/mwtop-blocks-{r}.json"))
    print(f"  mwtop blocks (--weights stored, {q['weight_bytes'] / 1e6:.0f} MB of weights against "
          f"{m['weight_bytes'] / 1e6:.0f}): decode {q['decode_tok_s']:.1f} tok/s (captures on "
          f"{q['decode_tok_s_capture']:.1f}, pair {q['decode_tok_s_pair']:.1f} per row), prompt "
          f"{q['prompt_tok_s']:.0f} tok/s (f32 {m['prompt_tok_s']:.0f}); / llama.cpp Q4_1 "
          f"{q['decode_tok_s'] / q4:.2f}x")
try:
    for line in open(f"{out}/transformers.json"):
        t = json.loads(line)
        print(f"transformers {t.get('dtype')}: decode {t.get('decode_tok_s', 0):.1f} tok/s")
except Exception as e:  # the peer's failure is reported, not fatal
    print(f"transformers: {e}")
PY
