#!/usr/bin/env bash
# Coverage-guided fuzzing of the three parsers with AFL++ on stable Rust
# (cargo-afl): each target for MINUTES, starting from fuzz/seeds/<target>/
# plus fuzz/corpus/<target>/; then each queue is minimized by afl-cmin (inputs
# under 24 KB, so the committed corpus stays small) back into
# fuzz/corpus/<target>/, and any crash or hang is copied to
# fuzz/crashes/<target>/ (all replayed by tests/fuzz_corpus.rs).
# Needs: cargo install cargo-afl && cargo afl config --build.
# Usage: scripts/fuzz.sh [MINUTES] [TARGET...]
set -euo pipefail
MINUTES=${1:-10}; shift || true
TARGETS=${*:-gguf_file hf_dir gguf_tokenizer}
cd "$(dirname "$0")/../fuzz"
cargo afl build --release
AFL_BIN=$(dirname "$(find ~/.local/share/afl.rs -path '*/afl/bin/afl-fuzz' | head -1)")
# Several fuzzers may share the cores (no CPU pinning); no UI; panics abort.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1 RUST_BACKTRACE=0
for t in $TARGETS; do
  rm -rf "out/$t" "out/$t.in"; mkdir -p "out/$t.in"
  cp seeds/$t/* "out/$t.in/"; cp corpus/$t/* "out/$t.in/" 2>/dev/null || true
  timeout --signal=INT "$((MINUTES * 60 + 60))" cargo afl fuzz -i "out/$t.in" -o "out/$t" \
    -V "$((MINUTES * 60))" -m 4096 -t 2000 -- "target/release/$t" > "out/$t.log" 2>&1 &
done
wait
for t in $TARGETS; do
  s=out/$t/default/fuzzer_stats
  echo "$t: $(grep -E '^(run_time|execs_done|execs_per_sec|corpus_count|bitmap_cvg|saved_crashes|saved_hangs) ' "$s" | awk '{print $1"="$3}' | tr '\n' ' ')"
  for kind in crashes hangs; do
    if ls out/$t/default/$kind/id:* >/dev/null 2>&1; then
      mkdir -p "crashes/$t"
      for f in out/$t/default/$kind/id:*; do cp "$f" "crashes/$t/$kind-$(basename "$f" | cut -d, -f1 | tr -d 'id:')"; done
    fi
  done
  # Outside afl-fuzz the persistent loop must run once per process.
  rm -rf "out/$t.small" "out/$t.min"; mkdir -p "out/$t.small"
  find "out/$t/default/queue" -maxdepth 1 -type f -size -24k -exec cp {} "out/$t.small/" \;
  AFL_FUZZER_LOOPCOUNT=1 "$AFL_BIN/afl-cmin.awk" -i "out/$t.small" -o "out/$t.min" -m 4096 -t 2000 -- "target/release/$t" > /dev/null
  rm -rf "corpus/$t"; mkdir -p "corpus/$t"
  i=0; for f in out/$t.min/*; do cp "$f" "corpus/$t/$(printf '%04d' $i)"; i=$((i + 1)); done
done
