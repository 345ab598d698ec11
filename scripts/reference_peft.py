#!/usr/bin/env python3
"""transformers + peft's side of the training comparison: one LoRA step on
a tiny fixture model, written as a fixture mwtop's tests compare with.

For each family: a LoRA (r 4, alpha 8, every decoder projection) whose B
is set to seeded random values (PEFT starts B at zero, where A's gradient
is zero), saved with save_pretrained as the initial adapter; the loss of
one right-padded batch with the prompt tokens masked (labels -100), as
transformers computes it; the gradients of every lora_A / lora_B; and the
adapter after one torch AdamW step (lr 1e-3, no weight decay).

    reference_peft.py FIXTURES_DIR OUT_DIR
"""
import json
import os
import sys

import torch
import transformers
from peft import LoraConfig, get_peft_model
from safetensors.torch import save_file

# (token ids, first counted position): the batch mwtop's test builds.
EXAMPLES = [([256, 72, 101, 108, 108, 111, 32, 119, 111, 114], 4),
            ([256, 97, 98, 99, 100], 1),
            ([256, 84, 104, 101, 32, 101, 110, 100], 6)]
LR = 1e-3


def run(family, fixtures, out):
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.join(fixtures, family), dtype=torch.float32)
    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, bias="none",
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj",
                                     "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(model, cfg)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.rand(p.shape, generator=g) * 0.2 - 0.1))
    init = os.path.join(out, family, "init")
    model.save_pretrained(init)
    width = max(len(ids) for ids, _ in EXAMPLES)
    pad = 0
    inp = torch.full((len(EXAMPLES), width), pad, dtype=torch.long)
    mask = torch.zeros((len(EXAMPLES), width), dtype=torch.long)
    labels = torch.full((len(EXAMPLES), width), -100, dtype=torch.long)
    for i, (ids, start) in enumerate(EXAMPLES):
        inp[i, :len(ids)] = torch.tensor(ids)
        mask[i, :len(ids)] = 1
        labels[i, start:len(ids)] = torch.tensor(ids[start:])
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                            lr=LR, weight_decay=0.0)
    loss = model(input_ids=inp, attention_mask=mask, labels=labels).loss
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            grads[name.replace(".default", "")] = p.grad.detach().clone().contiguous()
    save_file(grads, os.path.join(out, family, "grads.safetensors"))
    opt.step()
    model.save_pretrained(os.path.join(out, family, "after"))
    json.dump({"source": f"transformers {transformers.__version__}, peft "
                         f"{__import__('peft').__version__}, torch {torch.__version__}, fp32 CPU",
               "examples": [{"ids": ids, "loss_from": s} for ids, s in EXAMPLES],
               "lr": LR, "loss": float(loss)},
              open(os.path.join(out, family, "reference.json"), "w"), indent=1)
    print(family, float(loss))


if __name__ == "__main__":
    for family in ["llama", "gemma3", "qwen2"]:
        run(family, sys.argv[1], sys.argv[2])
