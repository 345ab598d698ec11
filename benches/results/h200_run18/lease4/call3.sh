#!/usr/bin/env bash
# Call 3 (verification of the withdrawn pair loads): assemble the model; gpu-blocks; gpu-check;
# on a planted file, the greedy and pair tokens with and without --states (deferred captures), CUDA vs CPU.
set -u
OUT=$1; W=/tmp/w
bash .carry/c3/prep.sh > $OUT/sha.txt 2>&1
. $W/remote-env.sh > /dev/null
export PYTHONPATH=/tmp/site
xz -dc $W/mwtop.xz > $W/mwtop && chmod +x $W/mwtop
$W/mwtop generate $W/model.gguf --prompt "warm up" --max-tokens 4 --device cuda --json > /dev/null 2>&1
f=.carry/blocks/planted-q4_0.gguf
for dev in cuda cpu; do
  for st in "" "--states"; do
    $W/mwtop generate $f --prompt "Summer is warm" --max-tokens 24 --no-stop --device $dev --json $st > /tmp/g-$dev$st.json 2>&1
    $W/mwtop generate $f --prompt "The capital of France is" --compare --mode keep --k 2 --max-tokens 16 --no-stop --device $dev --json $st > /tmp/p-$dev$st.json 2>&1
  done
done
python3 - > $OUT/planted.txt <<'PY'
import json
def toks(n):
    try:
        j = json.load(open(n))
    except Exception as e:
        return f"ERR {e}: {open(n).read()[:300]}"
    if "tokens" in j: return j["tokens"]
    return {k: v["tokens"] for k, v in j.items() if isinstance(v, dict) and "tokens" in v}
for kind in ("g", "p"):
    for st in ("", "--states"):
        a, b = toks(f"/tmp/{kind}-cuda{st}.json"), toks(f"/tmp/{kind}-cpu{st}.json")
        print(kind, st or "plain", "EQUAL" if a == b else "DIFFER", "cuda", a, "cpu", b)
PY
timeout 100 bash scripts/gpu-blocks.sh $W/mwtop .carry/blocks /tmp/blocks > $OUT/blocks.txt 2>&1; echo "blocks rc $?" >> $OUT/blocks.txt
timeout 260 bash scripts/gpu-check.sh $W/mwtop $W/model.gguf /tmp/check > $OUT/check.txt 2>&1; echo "check rc $?" >> $OUT/check.txt
