#!/usr/bin/env bash
# Call 4: the 8B-shaped Q4_0 GGUF: mwtop bench with the wide-input defaults (staged, 16 warps a
# block) against the old ones (MWTOP_GEMV_STAGE=0 MWTOP_GEMV_BLOCK_ROWS=4), and llama-bench.
set -u
OUT=$1; W=/tmp/w
cat .carry/c6/lb.xz.part* | xz -dc > $W/llama-bench && chmod +x $W/llama-bench
. $W/remote-env.sh > /dev/null
export PYTHONPATH=/tmp/site
M=/tmp/scale-8b-q4_0.gguf
[ -f $M ] || python3 scripts/write_scale_gguf.py $W/model.gguf $M q4_0 > $OUT/write.txt
for r in 1 2; do
  for cfg in MWTOP_DEFAULT=1 "MWTOP_GEMV_STAGE=0 MWTOP_GEMV_BLOCK_ROWS=4"; do
    echo "== round $r $cfg" >> $OUT/scale.txt
    env $cfg timeout 60 $W/mwtop bench $M --device cuda --decode 64 --json >> $OUT/scale.txt 2>&1
  done
done
$W/llama-bench -m $M -ngl 99 -p 512 -n 128 -r 3 -o json > $OUT/llamacpp.json 2> /dev/null
