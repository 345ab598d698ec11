#!/usr/bin/env bash
# The speed issue's scale run on the GPU machine: a Llama-3-8B-shaped bf16
# checkpoint (random weights, four shards; scripts/write_scale_model.py)
# opened by mmap and run with its matrices kept bf16 (`--weights stored`,
# the GPU default) and as an f32 copy: greedy generation (the same tokens
# expected), whole-command wall time (load included), perplexity of
# assets/eval.txt; transformers loads, decodes and scores the same
# checkpoint in the same call (scripts/scale_transformers.py). Peak GPU
# memory is nvidia-smi's "used", sampled every 100 ms, less what was used
# before. Each step writes its own file, so a cut-off run keeps the rest;
# the device tool returns at most 8 files: tar OUTDIR to bring it all back.
# Usage: scripts/gpu-scale.sh MWTOP OUTDIR [MODELDIR]   (SCALE_LAYERS=N: fewer layers)
set -euo pipefail
BIN=$1; OUT=$2; M=${3:-/tmp/scale-llama8b}
mkdir -p "$OUT"
[ -f "$M/config.json" ] || python3 scripts/write_scale_model.py "$M" | tee "$OUT/write.txt"
du -sb "$M" | tee "$OUT/size.txt"
PROMPT=$(head -c 200 assets/eval.txt)
# step NAME COMMAND...: stdout into OUT/NAME.json; wall seconds and peak GPU MiB into OUT/NAME.txt
. "$(dirname "$0")/gpu-step.sh"
gen() { "$BIN" generate "$M" --prompt "$PROMPT" --max-tokens 64 --no-stop --device cuda --json "$@"; }
# The first CUDA run on a fresh machine waits while the driver compiles
# candle's PTX (bf16 kernels included) into its cache: timed apart.
step gen_stored_cold gen
step gen_stored gen
step transformers python3 scripts/scale_transformers.py "$M" assets/eval.txt 64 64
step gen_f32 gen --weights f32
# One window over the whole text, as transformers scores it.
step eval_stored "$BIN" eval "$M" --text assets/eval.txt --bos --window 4096 --device cuda --json
step eval_f32 "$BIN" eval "$M" --text assets/eval.txt --bos --window 4096 --device cuda --weights f32 --json
# Prompt, decode (graph, eager, captures on) and the A/B pair at this scale.
step bench_stored "$BIN" bench "$M" --device cuda --decode 32 --json
python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
j = lambda n: json.load(open(f"{out}/{n}.json"))
w = lambda n: dict(zip(*[iter(open(f"{out}/{n}.txt").read().split())] * 2))
gs, gf, t = j("gen_stored"), j("gen_f32"), j("transformers")
for name, g in [("mwtop --weights stored", gs), ("mwtop --weights f32", gf)]:
    key = "gen_stored" if g is gs else "gen_f32"
    print(f"{name}: {len(g['tokens'])} tokens in {g['seconds']:.2f} s ({len(g['tokens']) / g['seconds']:.1f} tok/s, prompt included); "
          f"command {w(key)['wall_s']} s, peak GPU {w(key)['peak_mib']} MiB")
print(f"transformers bf16: load {t['load_seconds']:.1f} s, decode {t['decode_tok_s']:.1f} tok/s, "
      f"peak GPU {w('transformers')['peak_mib']} MiB (fp32 scoring included)")
print("stored and f32 tokens equal:", gs["tokens"] == gf["tokens"])
cold = j("gen_stored_cold")
print(f"first stored run on the machine: {cold['seconds']:.2f} s for the same tokens "
      f"(command {w('gen_stored_cold')['wall_s']} s): the driver's one-time compile of candle's kernels")
b = j("bench_stored")
print(f"bench stored: prompt {b['prompt_tok_s']:.0f} tok/s, decode {b['decode_tok_s']:.1f} tok/s "
      f"(eager {b['decode_tok_s_eager']:.1f}, captures on {b['decode_tok_s_capture']:.1f}), "
      f"pair {b['decode_tok_s_pair']:.1f} tok/s per row; peak GPU {w('bench_stored')['peak_mib']} MiB")
es, ef = j("eval_stored")["perplexity"], j("eval_f32")["perplexity"]
tp = t["perplexity_fp32"]
print(f"perplexity: stored {es:.6f}, f32 {ef:.6f}, transformers fp32 {tp:.6f}; "
      f"relative differences {abs(es / tp - 1):.2e}, {abs(ef / tp - 1):.2e}")
PY
