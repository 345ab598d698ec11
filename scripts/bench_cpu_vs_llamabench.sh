#!/usr/bin/env bash
# The speed issue's CPU figure: prompt and decode tokens/s of mwtop (f32,
# dense weights) next to llama.cpp's own `llama-bench` (built from source
# for this CPU, `-DGGML_NATIVE=ON`) on the F32 GGUF of the same weights
# (scripts/make_f32_gguf.py), the same thread count (llama-bench's KV cache
# is f16, it takes no f32 one; mwtop's is f32),
# rounds alternating so both see the same machine. llama-bench's pp412 /
# tg64 against mwtop bench's 413-token prompt and 64 decoded tokens.
# Usage: scripts/bench_cpu_vs_llamabench.sh MWTOP LLAMA_BENCH MODEL.gguf F32.gguf [THREADS] [ROUNDS]
set -euo pipefail
BIN=$1; LB=$2; Q=$3; F32=$4; T=${5:-2}; R=${6:-3}
OUT=$(mktemp -d)
for r in $(seq "$R"); do
  "$LB" -m "$F32" -t "$T" -p 412 -n 64 -r 2 -o json > "$OUT/llama-$r.json" 2> /dev/null
  RAYON_NUM_THREADS=$T "$BIN" bench "$Q" --device cpu --decode 64 --json > "$OUT/mwtop-$r.json"
done
python3 - "$OUT" "$R" "$T" <<'PY'
import json, sys
out, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
print(f"{threads} threads; tok/s: llama.cpp prompt / decode, mwtop prompt / decode (captures on), ratios mwtop / llama.cpp")
for r in range(1, rounds + 1):
    lb = json.load(open(f"{out}/llama-{r}.json"))
    pp = next(x["avg_ts"] for x in lb if x["n_prompt"] > 0)
    tg = next(x["avg_ts"] for x in lb if x["n_gen"] > 0)
    m = json.load(open(f"{out}/mwtop-{r}.json"))
    print(f"round {r}: llama.cpp {pp:.1f} / {tg:.1f}; mwtop {m['prompt_tok_s']:.1f} / {m['decode_tok_s']:.1f} "
          f"({m['prompt_tok_s_capture']:.1f} / {m['decode_tok_s_capture']:.1f}); "
          f"prompt {m['prompt_tok_s'] / pp:.2f}x, decode {m['decode_tok_s'] / tg:.2f}x")
PY
rm -rf "$OUT"
