#!/usr/bin/env bash
# Training speed on the GPU machine, mwtop against transformers + peft in
# the same call: the same GGUF (fp32), data, recipe and updates; counted
# (response) tokens per second over the updates after the first; the peer
# twice: its micro-batches in order, and grouped by length as mwtop's are.
# Usage: scripts/gpu-train-bench.sh MWTOP GGUF DATA.json OUTDIR [STEPS] [BATCH] [ACCUM] [MAX_LEN]
set -euo pipefail
BIN=$1; GGUF=$2; DATA=$3; OUT=$4; STEPS=${5:-6}; BATCH=${6:-8}; ACCUM=${7:-4}; MAX_LEN=${8:-512}
mkdir -p "$OUT"
rm -rf "$OUT/bench-adapter"
"$BIN" finetune "$GGUF" --data "$DATA" --out "$OUT/bench-adapter" --steps "$STEPS" \
  --batch "$BATCH" --grad-accum "$ACCUM" --max-len "$MAX_LEN" --device "${DEVICE:-cuda}" --json > "$OUT/mwtop_train.json"
python3 scripts/bench_peft_train.py "$GGUF" "$DATA" "$STEPS" "$BATCH" "$ACCUM" "$MAX_LEN" > "$OUT/peft_train.json"
GROUP_BY_LENGTH=1 python3 scripts/bench_peft_train.py "$GGUF" "$DATA" "$STEPS" "$BATCH" "$ACCUM" "$MAX_LEN" > "$OUT/peft_train_grouped.json"
python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
m = json.load(open(f"{o}/mwtop_train.json"))
secs = m["update_seconds"][-1] - m["update_seconds"][0]
toks = sum(m["update_tokens"][1:])
ours = toks / secs
for name, how in [("peft_train", "micro-batches in order (HF Trainer's default)"),
                  ("peft_train_grouped", "micro-batches grouped by length, as mwtop's")]:
    p = json.load(open(f"{o}/{name}.json"))
    print(f"mwtop {ours:.0f} counted tokens/s, transformers+peft {p['tokens_per_second']:.0f} "
          f"({how}): {ours / p['tokens_per_second']:.2f}x")
PY
