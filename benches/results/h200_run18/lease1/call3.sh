#!/usr/bin/env bash
# Call 3: assemble the model; the sweep against transformers; the GEMV's held loads on and off
# (f32 copy, alternating); blocks and the correctness checks.
set -u
OUT=$1; W=/tmp/w
bash .carry/c3/prep.sh > $OUT/sha.txt 2>&1
. $W/remote-env.sh > /dev/null
export PYTHONPATH=/tmp/site
xz -dc $W/mwtop.xz > $W/mwtop && chmod +x $W/mwtop
$W/mwtop generate $W/model.gguf --prompt "warm up" --max-tokens 4 --device cuda --json > /dev/null 2>&1
for r in 1 2; do
  for h in 1 0; do
    echo "== round $r MWTOP_GEMV_HOIST=$h" >> $OUT/ab.txt
    MWTOP_GEMV_HOIST=$h timeout 60 $W/mwtop bench $W/model.gguf --device cuda --dtype f32 --weights f32 --decode 128 --json >> $OUT/ab.txt 2>&1
  done
done
for r in 1 2; do
  for w in stored f32; do
    $W/mwtop eval $W/model.gguf --text assets/eval.txt --bos --sweep --weights $w --device cuda --json > /tmp/sweep-$w-$r.json 2> /tmp/sweep-$w-$r.log
  done
done
for w in stored f32; do
  echo "== mwtop --weights $w" >> $OUT/sweep.txt
  timeout 120 python3 scripts/bench_sweep.py $W/model.gguf assets/eval.txt /tmp/sweep-$w-2.json >> $OUT/sweep.txt 2>&1
  echo "rc $?" >> $OUT/sweep.txt
done
grep -h seconds /tmp/sweep-*.json | tr -d ' ' >> $OUT/sweep.txt
timeout 100 bash scripts/gpu-blocks.sh $W/mwtop .carry/blocks /tmp/blocks > $OUT/blocks.txt 2>&1; echo "blocks rc $?" >> $OUT/blocks.txt
timeout 260 bash scripts/gpu-check.sh $W/mwtop $W/model.gguf /tmp/check > $OUT/check.txt 2>&1; echo "check rc $?" >> $OUT/check.txt
