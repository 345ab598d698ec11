#!/usr/bin/env python3
"""transformers + peft's side of the training-speed comparison: the recipe
`mwtop finetune` runs (LoRA r/alpha on every decoder projection, AdamW,
Stanford Alpaca's prompt, the loss on the response and EOS, examples cut
at MAX_LEN, micro-batches of BATCH right-padded, ACCUM per update; with
GROUP_BY_LENGTH=1 each update's examples sorted by length first), on the
same GGUF file dequantized to fp32. Prints JSON: counted (response) tokens
per second over the updates after the first.

    bench_peft_train.py GGUF DATA.json STEPS BATCH ACCUM MAX_LEN [RANK]
"""
import json
import os
import sys
import time

import torch
import transformers
from peft import LoraConfig, get_peft_model

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# GROUP_BY_LENGTH=1: micro-batches of examples of similar length within each
# update (what mwtop does); unset: in file order, as HF's Trainer by default.
GROUP = os.environ.get("GROUP_BY_LENGTH") == "1"


def prompt(ins, inp):
    if inp.strip():
        return ("Below is an instruction that describes a task, paired with an input that provides "
                "further context. Write a response that appropriately completes the request.\n\n"
                f"### Instruction:\n{ins}\n\n### Input:\n{inp}\n\n### Response:\n")
    return ("Below is an instruction that describes a task. Write a response that appropriately "
            f"completes the request.\n\n### Instruction:\n{ins}\n\n### Response:\n")


def main(gguf, data, steps, batch, accum, max_len, rank=16):
    d, f = os.path.split(gguf)
    tok = transformers.AutoTokenizer.from_pretrained(d, gguf_file=f)
    model = transformers.AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=torch.float32)
    model = get_peft_model(model.to(DEVICE), LoraConfig(
        r=rank, lora_alpha=16, lora_dropout=0.0, bias="none",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    bos = [tok.bos_token_id] if tok.bos_token_id is not None and tok("a").input_ids[:1] == [tok.bos_token_id] else []
    eos = tok.eos_token_id
    examples = []
    for r in json.load(open(data)):
        p = prompt(r["instruction"], r.get("input", ""))
        start = len(bos) + len(tok(p, add_special_tokens=False).input_ids)
        ids = (bos + tok(p + r["output"], add_special_tokens=False).input_ids + [eos])[:max_len]
        if start < len(ids):
            examples.append((ids, start))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4, weight_decay=0.0)
    model.train()
    need = steps * batch * accum
    examples = (examples * (need // len(examples) + 1))[:need]
    counted, t0 = 0, None
    for u in range(steps):
        if u == 1:
            if DEVICE == "cuda":
                torch.cuda.synchronize()
            t0, counted = time.time(), 0
        chunk = examples[u * batch * accum:(u + 1) * batch * accum]
        if GROUP:  # the update's examples by length, as mwtop's micro-batches
            chunk = sorted(chunk, key=lambda e: len(e[0]))
        total = sum(len(ids) - s for ids, s in chunk)
        for m in range(accum):
            mb = chunk[m * batch:(m + 1) * batch]
            w = max(len(ids) for ids, _ in mb)
            inp = torch.full((len(mb), w), eos, dtype=torch.long)
            lab = torch.full((len(mb), w), -100, dtype=torch.long)
            att = torch.zeros((len(mb), w), dtype=torch.long)
            for i, (ids, s) in enumerate(mb):
                inp[i, :len(ids)] = torch.tensor(ids)
                lab[i, s:len(ids)] = torch.tensor(ids[s:])
                att[i, :len(ids)] = 1
            logits = model(input_ids=inp.to(DEVICE), attention_mask=att.to(DEVICE)).logits
            loss = torch.nn.functional.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), lab[:, 1:].flatten().to(DEVICE),
                ignore_index=-100, reduction="sum") / total
            loss.backward()
        opt.step()
        opt.zero_grad()
        counted += total
    if DEVICE == "cuda":
        torch.cuda.synchronize()
    secs = time.time() - t0
    print(json.dumps({"peer": "transformers+peft", "device": DEVICE, "group_by_length": GROUP, "updates_timed": steps - 1,
                      "counted_tokens": counted, "seconds": secs,
                      "tokens_per_second": counted / secs}), flush=True)


if __name__ == "__main__":
    a = sys.argv[1:]
    main(a[0], a[1], *map(int, a[2:]))
