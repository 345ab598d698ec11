#!/usr/bin/env bash
# Call 4: the 8B-shaped Q4_0 GGUF against llama-bench (scripts/gpu-scale-gguf.sh), then its
# decode with the block GEMV's burst at 1 (the lane's one part in flight of before), and Q8_0.
set -u
OUT=$1; W=/tmp/w
cat .carry/c6/lb.xz.part* | xz -dc > $W/llama-bench && chmod +x $W/llama-bench
. $W/remote-env.sh > /dev/null
export PYTHONPATH=/tmp/site
timeout 200 bash scripts/gpu-scale-gguf.sh $W/mwtop $W/llama-bench $W/model.gguf /tmp/q4 q4_0 > $OUT/q4.log 2>&1; echo "rc $?" >> $OUT/q4.log
MWTOP_GEMVQ_BURST=1 timeout 60 $W/mwtop bench /tmp/scale-8b-q4_0.gguf --device cuda --decode 64 --json > $OUT/q4-burst1.json 2>&1
timeout 200 bash scripts/gpu-scale-gguf.sh $W/mwtop $W/llama-bench $W/model.gguf /tmp/q8 q8_0 > $OUT/q8.log 2>&1; echo "rc $?" >> $OUT/q8.log
tar czf $OUT/scale.tgz -C /tmp q4 q8
