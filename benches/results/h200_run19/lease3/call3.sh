#!/usr/bin/env bash
# Call 3: captures through queued pinned copies with their own event (default) against copies as
# the step ends (MWTOP_CAPTURE_PINNED=0), alternating; gpu-blocks; gpu-check.
set -u
OUT=$1; W=/tmp/w
bash .carry/c3/prep.sh > $OUT/sha.txt 2>&1
. $W/remote-env.sh > /dev/null
export PYTHONPATH=/tmp/site
xz -dc $W/mwtop.xz > $W/mwtop && chmod +x $W/mwtop
$W/mwtop generate $W/model.gguf --prompt "warm up" --max-tokens 4 --device cuda --json > /dev/null 2>&1
for r in 1 2; do
  for cfg in MWTOP_DEFAULT=1 MWTOP_CAPTURE_PINNED=0; do
    for w in f32 stored; do
      echo "== round $r $cfg $w" >> $OUT/ab.txt
      env $cfg timeout 60 $W/mwtop bench $W/model.gguf --device cuda --dtype f32 --weights $w --decode 128 --json >> $OUT/ab.txt 2>&1
    done
  done
done
timeout 100 bash scripts/gpu-blocks.sh $W/mwtop .carry/blocks /tmp/blocks > $OUT/blocks.txt 2>&1; echo "blocks rc $?" >> $OUT/blocks.txt
timeout 220 bash scripts/gpu-check.sh $W/mwtop $W/model.gguf /tmp/check > $OUT/check.txt 2>&1; echo "check rc $?" >> $OUT/check.txt
