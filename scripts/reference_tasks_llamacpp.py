#!/usr/bin/env python3
"""llama.cpp's side of a zero-shot comparison, run here on the CPU: the
GGUF file's weights dequantized by gguf-py into an F32 GGUF (so llama.cpp
computes in f32 what mwtop computes from the same dequantized weights),
then every request scored by llama.cpp (llama-cpp-python) with its own
tokenizer, as lm-evaluation-harness scores it: context trailing spaces
move to the continuation; whole = tok(context + continuation), ctx =
tok(context), the continuation is whole[len(ctx):]; BOS first when the
file says the tokenizer adds one; the log-likelihood is the sum of
log-softmax over the continuation's tokens.

    pip install gguf==0.19.0 llama-cpp-python==0.3.36 numpy
    python3 scripts/reference_tasks_llamacpp.py MODEL.gguf REQUESTS.jsonl OUT.json
"""
import json
import os
import sys
import tempfile
import time

import gguf
import llama_cpp
import numpy as np


def dequantized_copy(src, dst):
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for f in r.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    for t in r.tensors:
        data = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32)
        w.add_tensor(t.name, data.reshape([int(d) for d in reversed(t.shape)]))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    src, requests, out = sys.argv[1:4]
    with tempfile.TemporaryDirectory() as tmp:
        f32 = os.path.join(tmp, "f32.gguf")
        dequantized_copy(src, f32)
        # F32 keys and values: llama.cpp caches them as F16 by default.
        llm = llama_cpp.Llama(model_path=f32, n_ctx=4096, logits_all=True, verbose=False,
                              n_threads=2, n_batch=4096, type_k=0, type_v=0)
        t0 = time.time()
        add_bos = llm.metadata.get("tokenizer.ggml.add_bos_token", "false") == "true"
        rows = []
        for line in open(requests):
            if not line.strip():
                continue
            r = json.loads(line)
            ctx, cont = r["request"]["context"], r["request"]["continuation"]
            n = len(ctx) - len(ctx.rstrip(" "))
            if n:
                cont = ctx[-n:] + cont
                ctx = ctx[:-n]
            tok = lambda s: llm.tokenize(s.encode(), add_bos=False, special=False)
            bos = [llm.token_bos()] if add_bos else []
            c = bos + tok(ctx)
            ids = bos + tok(ctx + cont)
            start = len(c)
            llm.reset()
            llm.eval(ids[:-1])
            logits = np.array(llm.scores[: len(ids) - 1], dtype=np.float64)
            m = logits.max(-1, keepdims=True)
            lse = (np.log(np.exp(logits - m).sum(-1, keepdims=True)) + m)[:, 0]
            ll = sum(logits[p - 1, ids[p]] - lse[p - 1] for p in range(start, len(ids)))
            rows.append({"task": r["task_name"], "doc_id": r["doc_id"], "choice": r["idx"],
                         "label": r["label"], "ids": ids, "cont_start": start, "loglik": float(ll)})
        seconds = time.time() - t0
    json.dump({"source": f"llama-cpp-python {llama_cpp.__version__}, F32 weights dequantized by gguf-py",
               "model": os.path.basename(src), "requests": rows}, open(out, "w"), indent=0)
    print(json.dumps({"peer": "llama.cpp", "requests": len(rows), "seconds": seconds}), flush=True)


if __name__ == "__main__":
    main()
