#!/usr/bin/env bash
# The paper's Tables 3 and 4 on our models: the base model, LoRA, and LoRA +
# MacDrop, SEEDS seeds each; average zero-shot accuracy on ARC-E, ARC-C,
# BoolQ, PIQA and WinoGrande, plain and under top-K_ATTACK zeroing of the
# massive rows, and perplexity of assets/eval.txt. Writes every run's JSON
# under OUTDIR and prints the table (mean +- sd over seeds).
#
# REQUESTS is scripts/all_requests.py's file (the task wheel is too large to
# carry to the GPU machine); DATA an Alpaca-layout file or a dataset name
# (alpaca-en-demo). Runs anywhere mwtop runs: DEVICE=cpu with LIMIT and
# STEPS small checks the plumbing on a laptop.
#
# Resumable: a run whose JSON is already in OUTDIR is not run again (each
# is written under a temporary name and renamed), so the same command,
# cut off by a time limit, goes on where it stopped.
#
# Usage: scripts/macdrop-experiment.sh MWTOP MODEL REQUESTS DATA OUTDIR
# Env:   DEVICE (cuda) SEEDS ("0 1 2") LIMIT (questions per task; all)
#        EPOCHS (3) STEPS (instead of epochs) BATCH (8) ACCUM (2) LR (1e-4)
#        RANK (16) ALPHA (16) K (5, MacDrop's rows) P0 (0.8)
#        K_ATTACK (3) MAX_LEN (512)
set -euo pipefail
BIN=$1; MODEL=$2; REQ=$3; DATA=$4; OUT=$5
DEVICE=${DEVICE:-cuda}; SEEDS=${SEEDS:-"0 1 2"}; EPOCHS=${EPOCHS:-3}
BATCH=${BATCH:-8}; ACCUM=${ACCUM:-2}; LR=${LR:-1e-4}; RANK=${RANK:-16}; ALPHA=${ALPHA:-16}
K=${K:-5}; P0=${P0:-0.8}; K_ATTACK=${K_ATTACK:-3}; MAX_LEN=${MAX_LEN:-512}
mkdir -p "$OUT"
python3 - "$REQ" "$OUT/five.jsonl" <<'PY'
import gzip, json, sys
five = {"arc_easy", "arc_challenge", "boolq", "piqa", "winogrande"}
src, dst = sys.argv[1], sys.argv[2]
opener = gzip.open if src.endswith(".gz") else open
with opener(src, "rt") as f, open(dst, "w") as out:
    for line in f:
        if line.strip() and json.loads(line)["task_name"] in five:
            out.write(line)
PY
limit=(); [ -n "${LIMIT:-}" ] && limit=(--limit "$LIMIT")
length=(--epochs "$EPOCHS"); [ -n "${STEPS:-}" ] && length=(--steps "$STEPS")
once() { # FILE COMMAND...: run COMMAND into FILE unless FILE exists
  local file=$1; shift
  [ -s "$file" ] && return 0
  "$@" > "$file.part" && mv "$file.part" "$file"
}
score() { # NAME [--adapter DIR]
  local name=$1; shift
  once "$OUT/$name.plain.json" "$BIN" tasks "$MODEL" --requests "$OUT/five.jsonl" "${limit[@]}" --device "$DEVICE" --json "$@"
  once "$OUT/$name.zero.json" "$BIN" tasks "$MODEL" --requests "$OUT/five.jsonl" "${limit[@]}" --device "$DEVICE" --mode zero --k "$K_ATTACK" --json "$@"
  once "$OUT/$name.ppl.json" "$BIN" eval "$MODEL" --text assets/eval.txt --bos --device "$DEVICE" --json "$@"
  once "$OUT/$name.ppl_zero.json" "$BIN" eval "$MODEL" --text assets/eval.txt --bos --device "$DEVICE" --mode zero --k "$K_ATTACK" --json "$@"
}
score base
for seed in $SEEDS; do
  for kind in lora macdrop; do
    extra=(); [ "$kind" = macdrop ] && extra=(--macdrop --k "$K" --p0 "$P0")
    if [ ! -s "$OUT/$kind-$seed.train.json" ]; then
      # A run cut off by a time limit left its checkpoint: go on from it.
      again=(); [ -f "$OUT/$kind-$seed/trainer_state.json" ] && again=(--resume)
      "$BIN" finetune "$MODEL" --data "$DATA" --out "$OUT/$kind-$seed" --seed "$seed" \
        "${length[@]}" --batch "$BATCH" --grad-accum "$ACCUM" --lr "$LR" \
        --lora-rank "$RANK" --lora-alpha "$ALPHA" --max-len "$MAX_LEN" --device "$DEVICE" \
        "${extra[@]}" "${again[@]}" --json > "$OUT/$kind-$seed.train.part"
      # Stopped by a signal, finetune saves its checkpoint and reports
      # itself unfinished: the run is not done until it says finished.
      python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["finished"] else 3)' \
        "$OUT/$kind-$seed.train.part"
      mv "$OUT/$kind-$seed.train.part" "$OUT/$kind-$seed.train.json"
    fi
    score "$kind-$seed" --adapter "$OUT/$kind-$seed"
  done
done
python3 - "$OUT" "$SEEDS" "$K_ATTACK" <<'PY'
import json, statistics, sys
out, seeds, k = sys.argv[1], sys.argv[2].split(), sys.argv[3]
def load(n, what): return json.load(open(f"{out}/{n}.{what}.json"))
def row(names):
    cols = []
    for what in ["plain", "zero"]:
        cols.append([100 * load(n, what)["average"]["acc"] for n in names])
    for what in ["ppl", "ppl_zero"]:
        cols.append([load(n, what)["perplexity"] for n in names])
    return cols
def cell(v, digits=1):
    if len(v) == 1: return f"{v[0]:.{digits}f}"
    return f"{statistics.mean(v):.{digits}f} +- {statistics.stdev(v):.{digits}f}"
print(f"| model | avg acc | avg acc, top-{k} zeroed | ppl | ppl, top-{k} zeroed |")
print("|---|---|---|---|---|")
for label, names in [("base", ["base"]), ("LoRA", [f"lora-{s}" for s in seeds]),
                     ("LoRA + MacDrop", [f"macdrop-{s}" for s in seeds])]:
    acc, acc0, ppl, ppl0 = row(names)
    print(f"| {label} | {cell(acc)} | {cell(acc0)} | {cell(ppl, 2)} | {cell(ppl0, 2)} |")
t = [load(f"{kind}-{s}", "train") for kind in ["lora", "macdrop"] for s in seeds]
print(f"\ntraining: {t[0]['examples']} examples, {t[0]['updates']} updates per run, "
      f"{statistics.mean(x['tokens_per_second'] for x in t):.0f} counted tokens/s on average")
PY
