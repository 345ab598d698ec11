#!/usr/bin/env bash
set -u
OUT=$1; W=/tmp/w
cat .carry/c6/lb.xz.part* | xz -dc > $W/llama-bench && chmod +x $W/llama-bench
. $W/remote-env.sh > /dev/null
export PYTHONPATH=/tmp/site
timeout 400 bash scripts/gpu-decode-peers.sh $W/mwtop $W/llama-bench $W/model.gguf /tmp/peers > $OUT/peers.txt 2>&1
echo "peers rc $?" >> $OUT/peers.txt
tail -3 /tmp/peers/*.log > $OUT/peers-logs.txt 2>&1
cp /tmp/peers/mwtop-1.json /tmp/peers/llamacpp-f32-1.json $OUT/ 2>/dev/null
