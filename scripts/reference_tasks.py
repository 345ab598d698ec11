#!/usr/bin/env python3
"""transformers' side of the zero-shot comparison, run on the GPU machine
(torch, transformers and the gguf package; the model read from the same
GGUF file mwtop reads, dequantized to fp32).

Scores requests as lm-evaluation-harness's HF backend does: context
trailing spaces move to the continuation; whole = tok(context +
continuation), ctx = tok(context), the continuation is whole[len(ctx):];
BOS first when the tokenizer adds one; the log-likelihood is the sum of
log-softmax over the continuation's tokens.

    reference_tasks.py reference GGUF REQUESTS OUT.json
        every request of REQUESTS (JSON lines with task_name, doc_id, idx,
        label, request.context, request.continuation), one at a time:
        token ids, continuation start and log-likelihood per request.
    reference_tasks.py time GGUF REQUESTS QUESTIONS_PER_TASK
        the first QUESTIONS_PER_TASK questions of each task, batched as the
        harness batches (32 requests, longest first, right-padded), after
        one untimed warm-up batch; prints the seconds (tokenizing and
        scoring) and the request count as JSON.
"""
import gzip
import json
import os
import sys
import time

import torch
import transformers

# CUDA on the GPU machine; the CPU (same fp32 weights) where there is none.
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def load(gguf):
    d, f = os.path.split(gguf)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        d, gguf_file=f, dtype=torch.float32).to(DEVICE).eval()
    return tok, model


def read(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt") as f:
        return [json.loads(l) for l in f if l.strip()]


def encode(tok, req):
    ctx, cont = req["request"]["context"], req["request"]["continuation"]
    n = len(ctx) - len(ctx.rstrip(" "))
    if n:
        cont = ctx[-n:] + cont
        ctx = ctx[:-n]
    bos = []
    probe = tok("a").input_ids
    if tok.bos_token_id is not None and probe and probe[0] == tok.bos_token_id:
        bos = [tok.bos_token_id]
    c = bos + tok(ctx, add_special_tokens=False).input_ids
    whole = bos + tok(ctx + cont, add_special_tokens=False).input_ids
    return whole, len(c)


@torch.no_grad()
def logliks(model, batch):
    """batch: [(ids, cont_start)]; right-padded, one forward."""
    width = max(len(ids) - 1 for ids, _ in batch)
    inp = torch.zeros((len(batch), width), dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, (ids, _) in enumerate(batch):
        inp[i, : len(ids) - 1] = torch.tensor(ids[:-1])
        mask[i, : len(ids) - 1] = 1
    logp = torch.log_softmax(model(inp.to(DEVICE), attention_mask=mask.to(DEVICE)).logits.float(), -1)
    out = []
    for i, (ids, start) in enumerate(batch):
        tgt = torch.tensor(ids[start:]).to(DEVICE)
        pos = torch.arange(start - 1, len(ids) - 1).to(DEVICE)
        out.append(float(logp[i, pos, tgt].double().sum()))
    return out


def reference(gguf, requests, out):
    tok, model = load(gguf)
    rows = []
    for r in read(requests):
        ids, start = encode(tok, r)
        rows.append({"task": r["task_name"], "doc_id": r["doc_id"], "choice": r["idx"],
                     "label": r["label"], "ids": ids, "cont_start": start,
                     "loglik": logliks(model, [(ids, start)])[0]})
    json.dump({"source": f"transformers {transformers.__version__}, torch {torch.__version__}, fp32 on " + DEVICE,
               "model": os.path.basename(gguf), "requests": rows}, open(out, "w"))
    print(f"{len(rows)} requests scored", flush=True)


def timed(gguf, requests, per_task):
    tok, model = load(gguf)
    seen, chosen = {}, []
    for r in read(requests):
        docs = seen.setdefault(r["task_name"], set())
        if r["doc_id"] in docs or len(docs) < per_task:
            docs.add(r["doc_id"])
            chosen.append(r)
    # One untimed batch first: CUDA's and cuBLAS's start-up is not scoring.
    logliks(model, [encode(tok, r) for r in chosen[:32]])
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    t0 = time.time()
    enc = sorted((encode(tok, r) for r in chosen), key=lambda e: -len(e[0]))
    n = 0
    for i in range(0, len(enc), 32):
        n += len(logliks(model, enc[i:i + 32]))
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    print(json.dumps({"peer": "transformers", "requests": n, "seconds": time.time() - t0}), flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "reference":
        reference(*sys.argv[2:5])
    else:
        timed(sys.argv[2], sys.argv[3], int(sys.argv[4]))
