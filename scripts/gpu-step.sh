# Sourced by the GPU scale scripts: `step NAME COMMAND...` runs COMMAND with
# its stdout in $OUT/NAME.json, and writes its wall seconds and peak GPU
# memory (nvidia-smi's "used", sampled every 100 ms, less what was used
# before) to $OUT/NAME.txt.
step() {
  local name=$1; shift
  local base; base=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/$name.smi" &
  local smi=$! t0; t0=$(date +%s.%N)
  "$@" > "$OUT/$name.json"
  local t1; t1=$(date +%s.%N)
  kill "$smi"; wait "$smi" 2>/dev/null || true
  echo "wall_s $(python3 -c "print(round($t1 - $t0, 2))") peak_mib $(( $(sort -n "$OUT/$name.smi" | tail -1) - base ))" | tee "$OUT/$name.txt"
  rm -f "$OUT/$name.smi"
}
