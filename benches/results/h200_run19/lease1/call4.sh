#!/usr/bin/env bash
# Call 4: the ten zero-shot tasks against transformers (scripts/gpu-tasks.sh).
set -u
OUT=$1; W=/tmp/w
. $W/remote-env.sh > /dev/null
export PYTHONPATH=/tmp/site
timeout 500 bash scripts/gpu-tasks.sh $W/mwtop /tmp/tasks $W/model.gguf .carry/c13/all.jsonl.gz 200 > $OUT/tasks.txt 2>&1; echo "tasks rc $?" >> $OUT/tasks.txt
cp /tmp/tasks/*.json $OUT/ 2>/dev/null
