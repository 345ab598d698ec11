#!/usr/bin/env bash
# Zero-shot tasks on the GPU machine with a `--features cuda` build:
# mwtop against transformers (scripts/reference_tasks.py, the same GGUF file)
# on the fixture's requests, request by request; then the speed of all ten
# tasks, and mwtop against transformers on the same subset in this call.
# ALL_REQUESTS.jsonl.gz comes from scripts/all_requests.py (the wheel itself
# is too large to carry); transformers needs the gguf wheel installed there.
# Usage: scripts/gpu-tasks.sh MWTOP_BINARY OUTDIR GGUF ALL_REQUESTS.jsonl.gz [QUESTIONS_PER_TASK]
set -euo pipefail
BIN=$1; OUT=$2; GGUF=$3; ALL=$4; SUB=${5:-200}
FIX=tests/fixtures/tasks/requests.jsonl
mkdir -p "$OUT"
"$BIN" tasks "$GGUF" --requests "$FIX" --per-request --device cuda --json > "$OUT/mwtop_fixture_cuda.json"
python3 scripts/reference_tasks.py reference "$GGUF" "$FIX" "$OUT/transformers_fixture.json"
t0=$(date +%s.%N)
"$BIN" tasks "$GGUF" --requests "$ALL" --device cuda --json > "$OUT/mwtop_all.json"
t1=$(date +%s.%N)
# (the GPU machine has no bc)
python3 -c "import json,sys; print(json.dumps({'mwtop_all_wall_s': float(sys.argv[2]) - float(sys.argv[1])}))" "$t0" "$t1" > "$OUT/mwtop_all_wall.json"
t0=$(date +%s.%N)
"$BIN" tasks "$GGUF" --requests "$ALL" --limit "$SUB" --device cuda --json > "$OUT/mwtop_subset.json"
t1=$(date +%s.%N)
python3 -c "import json,sys; print(json.dumps({'wall_s': float(sys.argv[2]) - float(sys.argv[1])}))" "$t0" "$t1" > "$OUT/mwtop_subset_wall.json"
python3 scripts/reference_tasks.py time "$GGUF" "$ALL" "$SUB" > "$OUT/transformers_subset.json"
python3 scripts/compare_tasks.py "$OUT/mwtop_fixture_cuda.json" "$OUT/transformers_fixture.json"
python3 - "$OUT" <<'PY'
import json, sys
o = sys.argv[1]
a = json.load(open(f"{o}/mwtop_all.json")); w = json.load(open(f"{o}/mwtop_all_wall.json"))
s = json.load(open(f"{o}/mwtop_subset.json")); t = json.load(open(f"{o}/transformers_subset.json"))
sw = json.load(open(f"{o}/mwtop_subset_wall.json"))["wall_s"]
print(f"all ten tasks: {a['average']['n']} questions, scoring {a['seconds']:.1f}s, whole command {w['mwtop_all_wall_s']:.1f}s")
ours = s["tokenize_seconds"] + s["seconds"]
print(f"subset ({t['requests']} requests): transformers {t['seconds']:.2f}s (tokenizing and scoring); "
      f"mwtop {ours:.2f}s (tokenizing {s['tokenize_seconds']:.2f}s, scoring {s['seconds']:.2f}s): "
      f"{t['seconds'] / ours:.1f}x; mwtop's whole command (loading the model too) {sw:.2f}s")
for x in a["tasks"]:
    print(f"  {x['task']:<14} n={x['n']:>5} acc {100*x['acc']:.2f} acc_norm {100*x['acc_norm']:.2f}")
PY
