#!/usr/bin/env python3
"""Token ids from llama.cpp's own tokenizer (llama-cpp-python, vocabulary
only) for tricky strings, as the reference for mwtop's tokenizer built from
a GGUF's vocabulary.

    pip install llama-cpp-python==0.3.36
    python3 scripts/reference_llamacpp_tokenizer.py MODEL.gguf OUT.json
"""
import json
import sys

import llama_cpp

CASES = [
    "In 2024, the price rose 12.5% to $1,234,567.89!",
    "Hello   world\t\ttabs\n\nnew  lines",
    "naïve café — 東京 🚀 emoji",
    "    leading spaces and trailing   ",
    "x=3.14159; y=-2e10; z=[1,2,3]",
    "Don't won't I'm you're they'll",
    "1234567890 000 99999999999",
    "\n\n\n   \t \n",
    "<start_of_turn>user\nHi there!<end_of_turn>\n<start_of_turn>model\n",
    "Ünïcödé ǅ ﬁ ﬀ 𝔘𝔫𝔦 Ελληνικά русский العربية हिन्दी 한국어",
    "👩‍👩‍👧‍👦 🏳️‍🌈 😀😃😄",
    "def f(x):\n    return x ** 2  # square\n",
    "The quick brown fox jumps over the lazy dog.",
    " a",
    "",
]


def main():
    path, out = sys.argv[1:3]
    llm = llama_cpp.Llama(model_path=path, vocab_only=True, verbose=False)
    rows = [{"text": t, "ids": llm.tokenize(t.encode("utf-8"), add_bos=False, special=True)} for t in CASES]
    meta = {"source": f"llama-cpp-python {llama_cpp.__version__}, vocab only", "cases": rows}
    with open(out, "w") as fh:
        json.dump(meta, fh, ensure_ascii=False, indent=1)
        fh.write("\n")


if __name__ == "__main__":
    main()
