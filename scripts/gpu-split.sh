#!/usr/bin/env bash
# Issue 17's run on a machine with two or more GPUs (not yet lent): a
# Llama-3-70B-shaped bf16 checkpoint (141 GB, more than one H200 holds),
# written to /dev/shm (a two-GPU machine's disk is smaller; its memory is
# not), opened by mwtop with the layers split over the GPUs and by
# transformers with device_map="auto", in one call. Records whole-command
# time (load included), tokens/s and the peak memory of each GPU.
# Usage: scripts/gpu-split.sh MWTOP OUTDIR [DEVICES]   (DEVICES: cuda:0,cuda:1)
set -euo pipefail
BIN=$1; OUT=$2; DEVICES=${3:-cuda:0,cuda:1}; M=${SPLIT_MODEL:-/dev/shm/scale-llama70b}
mkdir -p "$OUT"
[ -f "$M/config.json" ] || SCALE_SHAPE=70b python3 scripts/write_scale_model.py "$M" | tee "$OUT/write.txt"
PROMPT=$(head -c 200 assets/eval.txt)
step() { # NAME COMMAND...: stdout into OUT/NAME.json; wall seconds and each GPU's peak MiB into OUT/NAME.txt
  local name=$1; shift
  nvidia-smi --query-gpu=index,memory.used --format=csv,noheader,nounits -lms 200 > "$OUT/$name.smi" &
  local smi=$! t0; t0=$(date +%s.%N)
  "$@" > "$OUT/$name.json"
  local t1; t1=$(date +%s.%N)
  kill "$smi"; wait "$smi" 2>/dev/null || true
  echo "wall_s $(python3 -c "print(round($t1 - $t0, 2))") peak_mib_per_gpu $(python3 - "$OUT/$name.smi" <<'PY'
import sys, collections
peak = collections.defaultdict(int)
for line in open(sys.argv[1]):
    i, used = [int(x) for x in line.split(",")]
    peak[i] = max(peak[i], used)
print(",".join(str(peak[i]) for i in sorted(peak)))
PY
)" | tee "$OUT/$name.txt"
  rm -f "$OUT/$name.smi"
}
# Warm the driver's kernel cache on a small model first (BENCHMARKS run 12).
"$BIN" generate tests/fixtures/families/llama --prompt warm --max-tokens 2 --device cuda --json > /dev/null
step gen "$BIN" generate "$M" --prompt "$PROMPT" --max-tokens 32 --no-stop --device "$DEVICES" --json
step scan "$BIN" scan "$M" --device "$DEVICES" --json
step bench "$BIN" bench "$M" --device "$DEVICES" --decode 16 --json
step transformers env DEVICE_MAP=auto FP32_SCORING=0 python3 scripts/scale_transformers.py "$M" assets/eval.txt 64 32
cat "$OUT"/*.txt
