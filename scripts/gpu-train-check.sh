#!/usr/bin/env bash
# Training on CUDA against training on the CPU, on the GPU machine with a
# `--features cuda` build: the same tiny fixture models (llama; gemma3 with
# its sliding window, GELU and QK-norms; qwen2 with biases), data, seed and
# LoRA + MacDrop recipe; every update's loss and the adapter written must
# agree (the CPU side runs candle's composed ops, the CUDA side mwtop's fused
# kernels and their backward). The CPU side is itself checked against
# finite differences and transformers + peft by tests/train.rs.
# Usage: scripts/gpu-train-check.sh MWTOP_BINARY OUTDIR
set -euo pipefail
BIN=$1; OUT=$2
mkdir -p "$OUT"
python3 - "$OUT/alpaca.jsonl" <<'PY'
import json, sys
with open(sys.argv[1], "w") as f:
    for i in range(24):
        f.write(json.dumps({"instruction": f"Count to {i % 4 + 2}, then name a colour.",
                            "input": "slowly" if i % 3 == 0 else "",
                            "output": "1 2 3 4 5"[: 2 * (i % 4) + 3] + " red" * (i % 5)}) + "\n")
PY
for fam in llama gemma3 qwen2; do
  for dev in cpu cuda; do
    rm -rf "$OUT/$fam-$dev"
    "$BIN" finetune "tests/fixtures/families/$fam" --data "$OUT/alpaca.jsonl" --out "$OUT/$fam-$dev" \
      --steps 4 --batch 4 --grad-accum 2 --lr 1e-2 --lora-rank 4 --macdrop --layer 1 --k 2 \
      --seed 3 --device "$dev" --json > "$OUT/$fam-$dev.json"
  done
done
python3 - "$OUT" <<'PY'
import json, sys
from safetensors.numpy import load_file
out = sys.argv[1]
bad = 0
for fam in ["llama", "gemma3", "qwen2"]:
    c = json.load(open(f"{out}/{fam}-cpu.json")); g = json.load(open(f"{out}/{fam}-cuda.json"))
    dl = max(abs(a - b) / max(abs(a), 1e-9) for a, b in zip(c["losses"], g["losses"]))
    ac = load_file(f"{out}/{fam}-cpu/adapter_model.safetensors")
    ag = load_file(f"{out}/{fam}-cuda/adapter_model.safetensors")
    da = max(float(abs(ac[k] - ag[k]).max()) for k in ac)
    ok = dl < 1e-4 and da < 1e-4 and set(ac) == set(ag)
    bad += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {fam}: losses {['%.6f' % x for x in g['losses']]}, "
          f"largest relative loss difference {dl:.2e}, largest adapter difference {da:.2e} over {len(ac)} tensors")
sys.exit(1 if bad else 0)
PY
