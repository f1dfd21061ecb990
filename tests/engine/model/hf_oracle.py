#!/usr/bin/env python3
"""Makes a tiny Hugging Face model folder and transformers' logits on fixed tokens: the oracle
that engine/model/llama.cc is checked against (tests/engine/model/llama_test.cc).

Usage: hf_oracle.py DIR VARIANT [--dtype float32|bfloat16] [--shards N]
  VARIANT  llama: GQA (4 heads, 2 key/value heads), llama3 rope scaling, untied head
           qwen2: q/k/v biases, tied embeddings, linear rope scaling
           gpt2: GPT2LMHeadModel (Conv1D layout, tied head)
           llama-nofile: config.json only (no weights: dstrain draws its own)
           reload: DIR is a folder already (dsckpt export --format hf): only the oracle,
           from AutoModelForCausalLM.from_pretrained(DIR)
Writes DIR/config.json and the weights with save_pretrained (safetensors; --shards N: a sharded
folder with an index), and DIR/oracle.safetensors: "ids" (2, 12) int64 and "logits" (2, 12, V)
float32 from the fp32 model.
"""
import argparse
import os

import torch
from safetensors.torch import save_file


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("dir")
    ap.add_argument("variant", choices=["llama", "qwen2", "gpt2", "llama-nofile", "reload"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--shards", type=int, default=1)
    a = ap.parse_args()
    ids = torch.randint(0, 311, (2, 12), generator=torch.Generator().manual_seed(1))
    if a.variant == "reload":
        from transformers import AutoModelForCausalLM
        model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.float32).eval()
        with torch.no_grad():
            logits = model(ids).logits.float()
        save_file({"ids": ids.contiguous(), "logits": logits.contiguous()},
                  os.path.join(a.dir, "oracle.safetensors"))
        return
    torch.manual_seed(0)
    common = dict(vocab_size=311, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  max_position_embeddings=128, rms_norm_eps=1e-5)
    if a.variant == "gpt2":
        from transformers import GPT2Config, GPT2LMHeadModel
        cfg = GPT2Config(vocab_size=311, n_embd=64, n_layer=3, n_head=4, n_positions=128)
        model = GPT2LMHeadModel(cfg)
    elif a.variant == "qwen2":
        from transformers import Qwen2Config, Qwen2ForCausalLM
        cfg = Qwen2Config(num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                          rope_scaling={"rope_type": "linear", "factor": 2.0}, **common)
        model = Qwen2ForCausalLM(cfg)
    else:
        from transformers import LlamaConfig, LlamaForCausalLM
        cfg = LlamaConfig(num_attention_heads=4, num_key_value_heads=2,
                          rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                        "high_freq_factor": 4.0,
                                        "original_max_position_embeddings": 16},
                          **common)
        model = LlamaForCausalLM(cfg)
    model.eval()
    # Biases and norms start at zero and one: make them matter.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    dtype = getattr(torch, a.dtype)
    model = model.to(dtype)
    os.makedirs(a.dir, exist_ok=True)
    if a.variant == "llama-nofile":
        cfg.save_pretrained(a.dir)
    else:
        size = None
        if a.shards > 1:
            total = sum(p.numel() * p.element_size() for p in model.parameters())
            size = f"{total // a.shards // 1000 + 1}KB"
        model.save_pretrained(a.dir, max_shard_size=size) if size else model.save_pretrained(a.dir)
    with torch.no_grad():
        logits = model.float()(ids).logits.float()
    save_file({"ids": ids.contiguous(), "logits": logits.contiguous()},
              os.path.join(a.dir, "oracle.safetensors"))


if __name__ == "__main__":
    main()
