#!/usr/bin/env python3
"""Write a Hugging Face model folder of a known shape, without weights, for dsrun --model_name.

Usage: make_model_folder.py SHAPE DIR      (SHAPE: bert-base, llama-3.2-1b, llama-2-13b, tiny-llama)

DIR gets the shape's config.json, as transformers' save_pretrained writes it for that model;
dsrun then trains from a random initialisation made as transformers makes one (docs/models.md).
bert-base also gets a tokenizer.json (WordPiece, needs the `tokenizers` library) whose special
tokens sit where bert-base-uncased has them ([PAD] 0, [UNK] 100, [CLS] 101, [SEP] 102, [MASK]
103): the masked-LM objective reads [MASK] and the special tokens from it. Its other entries are
placeholders ("w104", ...): tokenize real text with your model's own tokenizer.json.
The seed's scenarios (examples/scenarios.md) are dry-run in CI on these folders.
"""
import json
import os
import sys

LLAMA = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
         "attention_bias": False, "mlp_bias": False, "initializer_range": 0.02,
         "torch_dtype": "bfloat16", "use_cache": True}

SHAPES = {
    # Llama 3.2 1B: 16 layers, 32 query and 8 key/value heads of 64, vocabulary 128256, tied.
    "llama-3.2-1b": {
        **LLAMA, "hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 16,
        "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64,
        "vocab_size": 128256, "max_position_embeddings": 131072, "rms_norm_eps": 1e-5,
        "rope_theta": 500000.0, "tie_word_embeddings": True,
        "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        "bos_token_id": 128000, "eos_token_id": 128001,
    },
    # Llama 2 13B: 40 layers of 5120, 40 heads, vocabulary 32000, untied head.
    "llama-2-13b": {
        **LLAMA, "hidden_size": 5120, "intermediate_size": 13824, "num_hidden_layers": 40,
        "num_attention_heads": 40, "num_key_value_heads": 40, "vocab_size": 32000,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2,
    },
    # A Llama small enough for a CPU (tests and the peer's smoke run).
    "tiny-llama": {
        **LLAMA, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 256,
        "max_position_embeddings": 512, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2,
    },
    # bert-base-uncased.
    "bert-base": {
        "architectures": ["BertForMaskedLM"], "model_type": "bert", "vocab_size": 30522,
        "hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
        "intermediate_size": 3072, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
        "attention_probs_dropout_prob": 0.1, "max_position_embeddings": 512,
        "type_vocab_size": 2, "initializer_range": 0.02, "layer_norm_eps": 1e-12,
        "pad_token_id": 0, "position_embedding_type": "absolute", "torch_dtype": "float32",
    },
}

BERT_SPECIAL = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


def bert_tokenizer(folder, vocab_size):
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
    vocab = {name: i for name, i in BERT_SPECIAL.items()}
    for i in range(vocab_size):
        if i not in BERT_SPECIAL.values():
            vocab[f"[unused{i}]" if i < 100 else f"w{i}"] = i
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(list(BERT_SPECIAL))
    tok.save(os.path.join(folder, "tokenizer.json"))


def write(shape, folder):
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(SHAPES[shape], f, indent=2)
        f.write("\n")
    if SHAPES[shape]["model_type"] == "bert":
        bert_tokenizer(folder, SHAPES[shape]["vocab_size"])


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in SHAPES:
        print(f"usage: {sys.argv[0]} SHAPE DIR  (SHAPE: {', '.join(SHAPES)})", file=sys.stderr)
        return 2
    write(sys.argv[1], sys.argv[2])
    print(f"{sys.argv[2]}: config.json of {sys.argv[1]}"
          + (" and tokenizer.json" if SHAPES[sys.argv[1]]["model_type"] == "bert" else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
