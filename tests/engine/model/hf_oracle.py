#!/usr/bin/env python3
"""Makes a tiny Hugging Face model folder and transformers' logits on fixed tokens: the oracle
that engine/model/llama.cc is checked against (tests/engine/model/llama_test.cc).

Usage: hf_oracle.py DIR VARIANT [--dtype float32|bfloat16] [--shards N]
  VARIANT  llama: GQA (4 heads, 2 key/value heads), llama3 rope scaling, untied head
           qwen2: q/k/v biases, tied embeddings, linear rope scaling
           gpt2: GPT2LMHeadModel (Conv1D layout, tied head)
           llama-nofile: config.json only (no weights: dstrain draws its own)
           bert: BertForMaskedLM (post-LayerNorm encoder, tied decoder with its own bias), a
           WordPiece tokenizer.json ([PAD] 0, [UNK] 1, [CLS] 2, [SEP] 3, [MASK] 4), and the
           second row of ids ending in 3 [PAD]s (attention_mask: ids != [PAD])
           reload: DIR is a folder already (dsckpt export --format hf): only the oracle,
           from AutoModelForCausalLM (or, for BertForMaskedLM, AutoModelForMaskedLM)
           .from_pretrained(DIR)
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
    ap.add_argument("variant", choices=["llama", "qwen2", "gpt2", "llama-nofile", "bert", "reload"])
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    ap.add_argument("--shards", type=int, default=1)
    a = ap.parse_args()
    ids = torch.randint(0, 311, (2, 12), generator=torch.Generator().manual_seed(1))
    if a.variant == "reload":
        import json
        with open(os.path.join(a.dir, "config.json")) as f:
            bert = json.load(f).get("architectures") == ["BertForMaskedLM"]
        if bert:
            from transformers import AutoModelForMaskedLM as Auto
            ids = bert_ids()
        else:
            from transformers import AutoModelForCausalLM as Auto
        model = Auto.from_pretrained(a.dir, dtype=torch.float32).eval()
        write_oracle(a.dir, model, ids, bert)
        return
    torch.manual_seed(0)
    common = dict(vocab_size=311, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                  max_position_embeddings=128, rms_norm_eps=1e-5)
    if a.variant == "bert":
        from transformers import BertConfig, BertForMaskedLM
        cfg = BertConfig(vocab_size=311, hidden_size=64, num_hidden_layers=3,
                         num_attention_heads=4, intermediate_size=96, max_position_embeddings=128,
                         pad_token_id=0)
        model = BertForMaskedLM(cfg)
        ids = bert_ids()
    elif a.variant == "gpt2":
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
    if a.variant == "bert":
        bert_tokenizer(a.dir)
    write_oracle(a.dir, model.float(), ids, a.variant == "bert")


def bert_ids():
    # Ordinary tokens (5..310), the second row padded at its end.
    ids = torch.randint(5, 311, (2, 12), generator=torch.Generator().manual_seed(1))
    ids[1, 9:] = 0
    return ids


def bert_tokenizer(folder):
    from tokenizers import Tokenizer, models, pre_tokenizers
    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {t: i for i, t in enumerate(special)}
    vocab.update({f"w{i}": i for i in range(len(special), 311)})
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(special)
    tok.save(os.path.join(folder, "tokenizer.json"))


def write_oracle(folder, model, ids, bert):
    with torch.no_grad():
        if bert:  # keys equal to [PAD] are not attended to
            logits = model(input_ids=ids, attention_mask=(ids != 0).long()).logits.float()
        else:
            logits = model(ids).logits.float()
    save_file({"ids": ids.contiguous(), "logits": logits.contiguous()},
              os.path.join(folder, "oracle.safetensors"))


if __name__ == "__main__":
    main()
