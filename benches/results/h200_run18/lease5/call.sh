#!/usr/bin/env bash
# One call: the planted files only (no model transfer): greedy and pair tokens with and without
# --states, CUDA vs CPU; gpu-blocks; decode with captures on and off on the planted q8_0 file.
set -u
OUT=$1; W=/tmp/w; mkdir -p $W
xz -dc .carry/c5/mwtop.xz > $W/mwtop && chmod +x $W/mwtop
f=.carry/blocks/planted-q4_0.gguf
for dev in cuda cpu; do
  for st in "" "--states"; do
    $W/mwtop generate $f --prompt "The capital of France is" --compare --mode keep --k 2 --max-tokens 16 --no-stop --device $dev --json $st > /tmp/p-$dev$st.json 2>&1
  done
done
python3 - > $OUT/planted.txt <<'PY'
import json
def toks(n):
    j = json.load(open(n))
    return {k: v["tokens"] for k, v in j.items() if isinstance(v, dict) and "tokens" in v}
for st in ("", "--states"):
    a, b = toks(f"/tmp/p-cuda{st}.json"), toks(f"/tmp/p-cpu{st}.json")
    print("pair", st or "plain", "EQUAL" if a == b else "DIFFER", a, b)
PY
timeout 100 bash scripts/gpu-blocks.sh $W/mwtop .carry/blocks /tmp/blocks > $OUT/blocks.txt 2>&1; echo "blocks rc $?" >> $OUT/blocks.txt
timeout 40 $W/mwtop bench .carry/blocks/planted-q8_0.gguf --device cuda --dtype f32 --weights f32 --decode 128 --json > $OUT/bench-planted.json 2>&1
