#!/usr/bin/env bash
# The speed issue's scale run for quantized weights on the GPU machine: a
# Llama-3-8B-shaped GGUF of random Q4_0 (or Q8_0) blocks
# (scripts/write_scale_gguf.py, the donor's tokenizer), opened by mmap and
# run with its blocks held as they are (`--weights stored`, the GPU
# default): greedy generation, `bench` (prompt, decode with graphs, eager,
# captures on, the A/B pair), perplexity of assets/eval.txt in one window,
# and the scan; llama.cpp's llama-bench (CUDA build, every layer on the
# GPU) on the same file in the same call. Peak GPU memory as in
# scripts/gpu-step.sh.
# Usage: scripts/gpu-scale-gguf.sh MWTOP LLAMA_BENCH DONOR.gguf OUTDIR [q4_0|q8_0]
set -euo pipefail
BIN=$1; LB=$2; DONOR=$3; OUT=$4; FMT=${5:-q4_0}
M=/tmp/scale-8b-$FMT.gguf
mkdir -p "$OUT"
. "$(dirname "$0")/gpu-step.sh"
[ -f "$M" ] || step write python3 scripts/write_scale_gguf.py "$DONOR" "$M" "$FMT"
PROMPT=$(head -c 200 assets/eval.txt)
gen() { "$BIN" generate "$M" --prompt "$PROMPT" --max-tokens 64 --no-stop --device cuda --json; }
# The first run compiles the kernels for this shape (timed apart).
step gen_cold gen
step gen gen
step bench "$BIN" bench "$M" --device cuda --decode 64 --json
step eval "$BIN" eval "$M" --text assets/eval.txt --bos --window 4096 --device cuda --json
step scan "$BIN" scan "$M" --device cuda --json
step llamacpp "$LB" -m "$M" -ngl 99 -p 512 -n 128 -r 3 -o json
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
j = lambda n: json.load(open(f"{out}/{n}.json"))
w = lambda n: dict(zip(*[iter(open(f"{out}/{n}.txt").read().split())] * 2))
g, b, e = j("gen"), j("bench"), j("eval")
print(f"generate: {len(g['tokens'])} tokens in {g['seconds']:.2f} s (prompt included); "
      f"command {w('gen')['wall_s']} s (first run {w('gen_cold')['wall_s']} s), peak GPU {w('gen')['peak_mib']} MiB")
print(f"bench: weights {b['weight_bytes'] / 1e9:.2f} GB on the device; prompt {b['prompt_tok_s']:.0f} tok/s "
      f"({b['prompt_tokens']} tokens); decode {b['decode_tok_s']:.1f} tok/s (eager {b['decode_tok_s_eager']:.1f}, "
      f"captures on {b['decode_tok_s_capture']:.1f}, pair {b['decode_tok_s_pair']:.1f} per row); "
      f"peak GPU {w('bench')['peak_mib']} MiB, command {w('bench')['wall_s']} s")
print(f"eval: perplexity {e['perplexity']:.3f}, command {w('eval')['wall_s']} s, peak GPU {w('eval')['peak_mib']} MiB")
print(f"scan: command {w('scan')['wall_s']} s, peak GPU {w('scan')['peak_mib']} MiB")
rows = j("llamacpp")
for r in rows:
    kind = "prompt" if r.get("n_prompt", 0) else "decode"
    n = r.get("n_prompt") or r.get("n_gen")
    print(f"llama.cpp {kind} ({n} tokens): {r['avg_ts']:.1f} tok/s (+- {r['stddev_ts']:.1f}), {r.get('backends', '')}")
tg = [r for r in rows if r.get("n_gen", 0) > 0][0]["avg_ts"]
pp = [r for r in rows if r.get("n_prompt", 0) > 0][0]["avg_ts"]
print(f"mwtop / llama.cpp: decode {b['decode_tok_s'] / tg:.2f}x, prompt {b['prompt_tok_s'] / pp:.2f}x "
      f"(peak GPU of llama-bench {w('llamacpp')['peak_mib']} MiB)")
PY
