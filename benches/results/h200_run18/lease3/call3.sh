#!/usr/bin/env bash
# Call 3: assemble the model; decode with the GEMV's settings (default, MWTOP_GEMV_PAIR=0,
# MWTOP_GEMV_HOIST=0), alternating; the sweep against transformers; gpu-blocks; gpu-check.
set -u
OUT=$1; W=/tmp/w
bash .carry/c3/prep.sh > $OUT/sha.txt 2>&1
. $W/remote-env.sh > /dev/null
export PYTHONPATH=/tmp/site
xz -dc $W/mwtop.xz > $W/mwtop && chmod +x $W/mwtop
$W/mwtop generate $W/model.gguf --prompt "warm up" --max-tokens 4 --device cuda --json > /dev/null 2>&1
for r in 1 2; do
  for cfg in MWTOP_DEFAULT=1 MWTOP_GEMV_PAIR=0 MWTOP_GEMV_HOIST=0; do
    echo "== round $r $cfg" >> $OUT/ab.txt
    env $cfg timeout 60 $W/mwtop bench $W/model.gguf --device cuda --dtype f32 --weights f32 --decode 128 --json >> $OUT/ab.txt 2>&1
  done
done
for r in 1 2; do
  for w in stored f32; do
    timeout 60 $W/mwtop eval $W/model.gguf --text assets/eval.txt --bos --sweep --weights $w --device cuda --json > /tmp/sweep-$w-$r.json 2> /tmp/sweep-$w-$r.log
  done
done
for w in stored f32; do
  echo "== mwtop --weights $w" >> $OUT/sweep.txt
  timeout 120 python3 scripts/bench_sweep.py $W/model.gguf assets/eval.txt /tmp/sweep-$w-2.json 2>/dev/null >> $OUT/sweep.txt
  echo "rc $?" >> $OUT/sweep.txt
done
grep -h seconds /tmp/sweep-*.json | tr -d ' ' >> $OUT/sweep.txt
timeout 100 bash scripts/gpu-blocks.sh $W/mwtop .carry/blocks /tmp/blocks > $OUT/blocks.txt 2>&1; echo "blocks rc $?" >> $OUT/blocks.txt
timeout 260 bash scripts/gpu-check.sh $W/mwtop $W/model.gguf /tmp/check > $OUT/check.txt 2>&1; echo "check rc $?" >> $OUT/check.txt
