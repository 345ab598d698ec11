#!/usr/bin/env python3
"""Tiny random-weight models of every family mwtop knows, written by
transformers' own save_pretrained, with transformers' numbers: the
reference for families nobody here can download.

Run on the GPU machine (torch 2.11, transformers 5.17, tokenizers):

    python3 scripts/reference_families.py OUTDIR

For each family OUTDIR/<name>/ holds config.json, model.safetensors (or
shards), tokenizer.json (byte-level, ids = byte values, <s> = 256,
</s> = 257) and reference.json with, computed by transformers in fp32 on
the CPU:

- per-token log-probs of a text longer than the sliding window, with and
  without BOS;
- greedy ids (full forward per step, no cache);
- max |x| per layer of each decoder layer's output and of the d_ff state
  (the input of down_proj), the top d_ff dims at BOS of the planted layer;
- perplexities with the top-2 rows of W_up/W_gate of that layer physically
  zeroed, and with only those two rows kept.

Each model has a planted massive weight: rows of gate/up of layer 1 aligned
with that layer's MLP input at BOS, and down_proj columns that write them to
one hidden dim.
"""

import json
import math
import os
import sys
import traceback

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

OUT = sys.argv[1] if len(sys.argv) > 1 else "."
V, D, F, L, NH, NKV, HD = 260, 64, 128, 3, 4, 2, 16
BOS, EOS = 256, 257
PLANT_LAYER, PLANT_DIMS, PLANT_HIDDEN = 1, (17, 90), 5
TEXT = (
    "The quick brown fox jumps over the lazy dog. Summer is warm; winter is cold. "
    "1234 5678!"
)

COMMON = dict(
    vocab_size=V,
    hidden_size=D,
    intermediate_size=F,
    num_hidden_layers=L,
    num_attention_heads=NH,
    num_key_value_heads=NKV,
    head_dim=HD,
    max_position_embeddings=512,
    bos_token_id=BOS,
    eos_token_id=EOS,
    tie_word_embeddings=False,
)

# name -> (config class, model class, extra config, layout, shard)
FAMILIES = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_parameters=dict(rope_type="llama3", rope_theta=500000.0, factor=8.0,
                             low_freq_factor=1.0, high_freq_factor=4.0,
                             original_max_position_embeddings=16),
        tie_word_embeddings=True), "v5", False),
    "llama_classic": ("LlamaConfig", "LlamaForCausalLM", dict(
        rope_parameters=dict(rope_type="linear", rope_theta=10000.0, factor=2.0)),
        "classic", True),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0)), "v5", False),
    "qwen2_swa": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        use_sliding_window=True, sliding_window=8, max_window_layers=1), "classic", False),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        sliding_window=8), "v5", False),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(
        rope_parameters=dict(rope_type="default", rope_theta=1000000.0),
        tie_word_embeddings=True), "v5", False),
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(
        rope_parameters=dict(rope_type="default", rope_theta=10000.0,
                             partial_rotary_factor=0.5),
        pad_token_id=258, sliding_window=None), "v5", False),
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", dict(
        rope_parameters=dict(rope_type="default", rope_theta=500000.0),
        pad_token_id=258), "v5", False),
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", dict(
        rope_parameters=dict(rope_type="default", rope_theta=10000.0),
        query_pre_attn_scalar=16, attn_logit_softcapping=50.0,
        final_logit_softcapping=30.0, sliding_window=8,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        pad_token_id=258), "v5", False),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", dict(
        rope_parameters=dict(
            full_attention=dict(rope_type="default", rope_theta=1000000.0),
            sliding_attention=dict(rope_type="default", rope_theta=10000.0)),
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
        query_pre_attn_scalar=16, sliding_window=8,
        hidden_activation="gelu_pytorch_tanh", tie_word_embeddings=True,
        pad_token_id=258), "v5", False),
}


def bytes_to_unicode():
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def write_tokenizer(path):
    b2u = bytes_to_unicode()
    vocab = {b2u[b]: b for b in range(256)}
    vocab["<s>"] = BOS
    vocab["</s>"] = EOS
    vocab["<pad>"] = 258
    vocab["<unused>"] = 259
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<s>", "</s>", "<pad>"])
    tok.save(os.path.join(path, "tokenizer.json"))
    return tok


def randomize(model, gemma):
    g = torch.Generator().manual_seed(1234)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                base = 0.0 if gemma else 1.0
                p.copy_(base + 0.1 * torch.randn(p.shape, generator=g))
            elif "embed" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.08 * torch.randn(p.shape, generator=g))


def mlp_rows(mlp):
    """(gate weight rows, up weight rows) as views, whatever the layout."""
    if hasattr(mlp, "gate_up_proj"):
        w = mlp.gate_up_proj.weight
        return w[:F], w[F:]
    return mlp.gate_proj.weight, mlp.up_proj.weight


def mlp_input_at_bos(model, ids):
    layer = model.model.layers[PLANT_LAYER]
    seen = {}

    # A forward hook that returns a value replaces the module's output: these return None.
    def keep_input(m, a, o):
        seen.setdefault("x", a[0].detach())

    hook = layer.mlp.register_forward_hook(keep_input)
    with torch.no_grad():
        model(torch.tensor([ids]))
    hook.remove()
    return seen["x"][0, 0]


def plant(model, ids):
    h = mlp_input_at_bos(model, ids)
    gate, up = mlp_rows(model.model.layers[PLANT_LAYER].mlp)
    down = model.model.layers[PLANT_LAYER].mlp.down_proj.weight
    with torch.no_grad():
        for j, scale in zip(PLANT_DIMS, (30.0, 20.0)):
            direction = h / h.dot(h)
            gate[j] = scale * direction
            up[j] = scale * direction
            down[:, j] = 0.0
            down[PLANT_HIDDEN, j] = 2.0


def capture(model, ids):
    layers = model.model.layers
    resid, dff, hooks = {}, {}, []
    for i, layer in enumerate(layers):
        def keep_resid(m, a, o, i=i):
            resid.setdefault(i, (o[0] if isinstance(o, tuple) else o).detach())

        def keep_dff(m, a, o, i=i):
            dff.setdefault(i, a[0].detach())

        hooks.append(layer.register_forward_hook(keep_resid))
        hooks.append(layer.mlp.down_proj.register_forward_hook(keep_dff))
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    for h in hooks:
        h.remove()
    return logits, resid, dff


def logprobs(logits, ids):
    lp = torch.log_softmax(logits, dim=-1)
    return [lp[p, ids[p + 1]].item() for p in range(len(ids) - 1)]


def perplexity(model, ids):
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].double()
    lp = logprobs(logits, ids)
    return math.exp(-sum(lp) / len(lp))


def greedy(model, ids, n):
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(n):
            nxt = int(model(torch.tensor([ids])).logits[0, -1].argmax())
            out.append(nxt)
            ids.append(nxt)
    return out


def zero_rows(model, dims, keep):
    gate, up = mlp_rows(model.model.layers[PLANT_LAYER].mlp)
    with torch.no_grad():
        mask = torch.ones(F, dtype=gate.dtype)
        if keep:
            mask.zero_()
            mask[list(dims)] = 1.0
        else:
            mask[list(dims)] = 0.0
        gate.mul_(mask[:, None])
        up.mul_(mask[:, None])


def to_classic(path):
    """Rewrites a v5 config.json into the classic hub layout."""
    p = os.path.join(path, "config.json")
    cfg = json.load(open(p))
    rp = cfg.pop("rope_parameters")
    cfg["rope_theta"] = rp.pop("rope_theta")
    if rp.get("rope_type", "default") != "default":
        cfg["rope_scaling"] = rp
    if "dtype" in cfg:
        cfg["torch_dtype"] = cfg.pop("dtype")
    json.dump(cfg, open(p, "w"), indent=2)


def build(name, cfg_cls, model_cls, extra, layout, shard):
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    kwargs = dict(COMMON)
    kwargs.update(extra)
    cfg = getattr(transformers, cfg_cls)(**kwargs)
    cfg._attn_implementation = "eager"
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(cfg).float().eval()
    randomize(model, name.startswith("gemma"))
    tok = write_tokenizer(path)
    text_ids = tok.encode(TEXT, add_special_tokens=False).ids
    assert text_ids == list(TEXT.encode()), "byte-level ids"
    bos_ids = [BOS] + text_ids
    plant(model, bos_ids)
    model.save_pretrained(path, max_shard_size="100KB" if shard else "1GB",
                          safe_serialization=True)
    if layout == "classic":
        to_classic(path)
    # Everything below comes from the model as transformers reads it back.
    model = getattr(transformers, model_cls).from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager").eval()
    logits, resid, dff = capture(model, bos_ids)
    plain_logits, _, _ = capture(model, text_ids)
    state0 = dff[PLANT_LAYER][0, 0]
    top = torch.argsort(state0.abs(), descending=True)[:8].tolist()
    ref = {
        "family": name,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "layout": layout,
        "sharded": shard,
        "text": TEXT,
        "bos_ids": bos_ids,
        "logprobs_bos": logprobs(logits, bos_ids),
        "logprobs_plain": logprobs(plain_logits, text_ids),
        "greedy_prompt": bos_ids[:12],
        "greedy": greedy(model, bos_ids[:12], 8),
        "resid_max": [resid[i][0].abs().max().item() for i in range(L)],
        "resid_argmax_dim": [int(resid[i][0].abs().max(0).values.argmax()) for i in range(L)],
        "dff_max": [dff[i][0].abs().max().item() for i in range(L)],
        "plant_layer": PLANT_LAYER,
        "dff_top_at_bos": top,
        "dff_top_values": [state0[j].item() for j in top],
        "perplexity": perplexity(model, bos_ids),
    }
    dims = top[:2]
    for mode in ("zero", "keep"):
        m = getattr(transformers, model_cls).from_pretrained(
            path, dtype=torch.float32, attn_implementation="eager").eval()
        zero_rows(m, dims, keep=(mode == "keep"))
        ref[f"perplexity_{mode}_top2"] = perplexity(m, bos_ids)
    json.dump(ref, open(os.path.join(path, "reference.json"), "w"), indent=1)
    print(f"{name}: ok, ppl {ref['perplexity']:.4f}, top {top[:2]}, resid max {ref['resid_max']}")


def main():
    os.makedirs(OUT, exist_ok=True)
    only = sys.argv[2:] or list(FAMILIES)
    failed = []
    for name in only:
        try:
            build(name, *FAMILIES[name])
        except Exception:
            traceback.print_exc()
            failed.append(name)
    print("failed:", failed)


if __name__ == "__main__":
    main()
