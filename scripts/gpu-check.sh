#!/usr/bin/env bash
# GPU checks, run on the GPU machine with a `--features cuda` build of mwtop:
#   mwtop on CUDA f32 against mwtop on CPU f32 (log-probs of every token within
#   1e-3, identical scans, perplexities within 0.1%), and against Hugging Face
#   transformers on the same GPU (greedy generations identical in f32; the
#   reference is tests/fixtures/smollm2_transformers_reference.json, made there
#   by scripts/reference_transformers.py), and the greedy original+attacked
#   pair (one batch of two; CUDA decodes it with a replayed graph) against the CPU;
#   decoded tokens' log-probabilities (the replayed graph's kernels) within
#   1e-4 of the CPU's, and the states it captures as it decodes (`--states`:
#   every layer's largest entries, written by the kernels that form them)
#   within 1e-3;
#   and the same runs with the layers split over the GPU and the CPU
#   (`--device cuda:0,cpu`: the residual stream crosses devices) against both;
#   the GPU's default holds a GGUF's blocks as they are (the super weights'
#   values, dequantized on each device, identical), and its dense f32 copy
#   (`--weights f32`) is checked against the CPU too.
# Usage: scripts/gpu-check.sh MWTOP_BINARY MODEL.gguf OUTDIR
set -euo pipefail
BIN=$1; MODEL=$2; OUT=$3
TEXT=assets/eval.txt
FIX=tests/fixtures/smollm2_transformers_reference.json
mkdir -p "$OUT"
for spec in cuda cpu cuda:0,cpu; do
  dev=${spec//[:,]/_}   # a file name: cuda_0_cpu
  "$BIN" eval "$MODEL" --text "$TEXT" --device "$spec" --per-token --json > "$OUT/eval-$dev.json"
  for mode in zero keep random-zero; do
    "$BIN" eval "$MODEL" --text "$TEXT" --bos --mode "$mode" --k 2 --device "$spec" --json > "$OUT/$mode-$dev.json"
  done
  "$BIN" scan "$MODEL" --device "$spec" --json > "$OUT/scan-$dev.json"
  # Original and keep-only attack as one batch of two: on CUDA a replayed graph.
  "$BIN" generate "$MODEL" --prompt "The capital of France is" --compare --mode keep --k 2 \
    --max-tokens 32 --device "$spec" --json --states > "$OUT/pair-$dev.json"
done
# The GPU's dense f32 copy (`--weights f32`), beside its default (a GGUF's
# blocks held as they are).
"$BIN" eval "$MODEL" --text "$TEXT" --device cuda --weights f32 --per-token --json > "$OUT/eval-cuda_f32.json"
"$BIN" generate "$MODEL" --prompt "The capital of France is" --compare --mode keep --k 2 \
  --max-tokens 32 --device cuda --weights f32 --json --states > "$OUT/pair-cuda_f32.json"
python3 - "$FIX" "$OUT" <<'PY' > "$OUT/prompts.txt"
import json, sys
for g in json.load(open(sys.argv[1]))["generations"]:
    print(json.dumps({"prompt": g["prompt"], "chat": g["chat"]}))
PY
i=0
while read -r line; do
  prompt=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["prompt"])' "$line")
  chat=$(python3 -c 'import json,sys; print("--chat" if json.loads(sys.argv[1])["chat"] else "")' "$line")
  "$BIN" generate "$MODEL" --prompt "$prompt" $chat --max-tokens 48 --device cuda --json --states > "$OUT/gen-$i.json"
  "$BIN" generate "$MODEL" --prompt "$prompt" $chat --max-tokens 48 --device cpu --json --states > "$OUT/gen-$i-cpu.json"
  i=$((i+1))
done < "$OUT/prompts.txt"
python3 scripts/gpu_compare.py "$FIX" "$OUT"
