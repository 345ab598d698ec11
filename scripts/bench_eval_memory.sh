#!/usr/bin/env bash
# Peak memory of perplexity at a long window on the CPU (issue 15's goal:
# window 8192 within 1 GB): mwtop eval on ~10k tokens of real text (the
# Alpaca demo data's responses), window 8192 stride 4096, and for contrast
# window 2048, each as its own process, peak resident size from the kernel
# (ru_maxrss of the child) with the wall time.
# Usage: scripts/bench_eval_memory.sh MWTOP_BINARY [MODEL]
set -euo pipefail
BIN=$1; MODEL=${2:-}
WORK=$(mktemp -d); trap 'rm -rf "$WORK"' EXIT
DATA=$(python3 -c "import os; print(os.path.join(os.environ.get('MWTOP_CACHE_DIR') or os.path.join(os.environ.get('XDG_CACHE_HOME') or os.path.expanduser('~/.cache'), 'mwtop'), 'alpaca_en_demo.json'))")
[ -f "$DATA" ] || { echo "no $DATA: run 'mwtop finetune --data alpaca-demo' once to fetch it" >&2; exit 1; }
python3 - "$DATA" "$WORK/long.txt" <<'PY'
import json, sys
rows = json.load(open(sys.argv[1]))
text, n = [], 0
for r in rows:
    text.append(r["output"].strip()); n += len(text[-1])
    if n > 48000:
        break
open(sys.argv[2], "w").write("\n\n".join(text))
PY
for window in 8192 2048; do
python3 - "$BIN" "$MODEL" "$WORK/long.txt" "$window" <<'PY'
import json, os, resource, subprocess, sys, time
bin_, model, text, window = sys.argv[1:5]
args = [bin_, "eval"] + ([model] if model else []) + ["--text", text, "--window", window, "--device", "cpu", "--json"]
t0 = time.time()
p = subprocess.run(args, capture_output=True, text=True)
wall = time.time() - t0
if p.returncode != 0:
    sys.exit(p.stderr)
r = json.loads(p.stdout)
peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
print(f"window {window:>5}: peak RSS {peak:7.0f} MiB, {wall:6.1f} s, {r['tokens']} tokens, ppl {r['perplexity']:.4f}  (goal at 8192: <= 1024 MiB)")
PY
done
