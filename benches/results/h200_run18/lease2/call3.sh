#!/usr/bin/env bash
# Call 3 (diagnosis): assemble the model; where a captured decode step's host time goes
# (MWTOP_LOG=mwtop=debug timings); held loads on/off for blocks; gpu-blocks.
set -u
OUT=$1; W=/tmp/w
bash .carry/c3/prep.sh > $OUT/sha.txt 2>&1
. $W/remote-env.sh > /dev/null
export PYTHONPATH=/tmp/site
xz -dc $W/mwtop.xz > $W/mwtop && chmod +x $W/mwtop
$W/mwtop generate $W/model.gguf --prompt "warm up" --max-tokens 4 --device cuda --json > /dev/null 2>&1
MWTOP_LOG=mwtop=debug timeout 60 $W/mwtop bench $W/model.gguf --device cuda --dtype f32 --weights f32 --decode 128 --json > $OUT/debug-bench.json 2> /tmp/debug.log
python3 - /tmp/debug.log > $OUT/debug-summary.txt <<'PY'
import re, sys, statistics as st
keys = {}
for line in open(sys.argv[1]):
    for k, v in re.findall(r"(\w+_us)=(\d+)", line):
        keys.setdefault(k, []).append(int(v))
for k, v in keys.items():
    print(k, "n", len(v), "median", st.median(v), "mean", round(st.mean(v), 1), "p90", sorted(v)[int(len(v) * .9)])
PY
for r in 1 2; do
  for h in 1 0; do
    echo "== round $r MWTOP_GEMV_HOIST=$h" >> $OUT/ab.txt
    MWTOP_GEMV_HOIST=$h timeout 60 $W/mwtop bench $W/model.gguf --device cuda --dtype f32 --weights stored --decode 128 --json >> $OUT/ab.txt 2>&1
  done
done
timeout 100 bash scripts/gpu-blocks.sh $W/mwtop .carry/blocks /tmp/blocks > $OUT/blocks.txt 2>&1; echo "blocks rc $?" >> $OUT/blocks.txt
