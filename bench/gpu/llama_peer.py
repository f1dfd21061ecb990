#!/usr/bin/env python3
# Training throughput of a Llama-shaped model in Hugging Face `transformers`, trained the way its
# users train it, in PyTorch eager mode and under torch.compile: the peer `dsrun bench` is held
# against for the model families (docs/models.md, docs/benchmarks.md). Same model (the
# config.json this script writes, random weights), same micro-batch and sequence length, same
# FLOPs-per-token formula as dsrun's (engine/model/llama.cc: 6 x the weights less the untied
# embedding, plus attention's 12 x layers x heads x head_dim x T), so tokens/s and MFU compare.
#
# The peer at its best settings: LlamaForCausalLM.from_config with attn_implementation="sdpa",
# fp32 weights under bf16 autocast (what `Trainer(bf16=True)` does), fused AdamW, TF32 matmuls,
# transformers' own loss (labels=...), no KV cache, random token batches made on the device, no
# host sync inside the step.
#
#   python3 bench/gpu/llama_peer.py --shape llama-3.2-1b --write-config DIR   # the folder only
#   python3 bench/gpu/llama_peer.py --shape llama-3.2-1b --seq-len 2048 --micro-batch 4 --json
# (run.sh step llama-1b writes the folder, runs this, then dsrun on the same folder.)
import argparse
import json
import os
import sys

import torch

# The shapes (config.json contents) of tools/make_model_folder.py: one source for dsrun's folder
# and this peer's model.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
from make_model_folder import SHAPES  # noqa: E402
from gpt_peer import first_line, free_device_memory, print_table, time_steps  # noqa: E402

LLAMA_SHAPES = sorted(k for k, v in SHAPES.items() if v["model_type"] == "llama")


def config_dict(shape: str) -> dict:
    return dict(SHAPES[shape])


def write_config(shape: str, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config_dict(shape), f, indent=2)
        f.write("\n")


def flops_per_token(cfg: dict, params: int, seq_len: int) -> float:
    # dsrun's formula (LlamaImpl::flops_per_token): `params` counts the tied matrix once.
    embeddings = cfg["vocab_size"] * cfg["hidden_size"]
    weights = params if cfg["tie_word_embeddings"] else params - embeddings
    attention = 12 * cfg["num_hidden_layers"] * cfg["num_attention_heads"] * cfg["head_dim"]
    return 6.0 * weights + attention * seq_len


def build_model(cfg: dict, device: torch.device):
    from transformers import LlamaConfig, LlamaForCausalLM
    config = LlamaConfig(**{k: v for k, v in cfg.items()
                            if k not in ("architectures", "model_type", "torch_dtype")})
    config.use_cache = False
    torch.manual_seed(1337)
    model = LlamaForCausalLM._from_config(config, attn_implementation="sdpa",
                                          dtype=torch.float32)
    return model.to(device).train()


def run_mode(mode: str, cfg: dict, args, device: torch.device) -> dict:
    model = build_model(cfg, device)
    params = sum(p.numel() for p in model.parameters())
    fpt = flops_per_token(cfg, params, args.seq_len)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True if device.type == "cuda" else None)
    step_model = torch.compile(model) if mode == "compile" else model
    B, T, V = args.micro_batch, args.seq_len, cfg["vocab_size"]

    def step() -> torch.Tensor:
        idx = torch.randint(V, (B, T), device=device)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = step_model(input_ids=idx, labels=idx).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    seconds, loss_value = time_steps(step, args.warmup, args.steps, device)
    tokens_per_s = args.steps * B * T / seconds
    return {"mode": mode, "step_ms": 1e3 * seconds / args.steps, "tokens_per_s": tokens_per_s,
            "mfu": tokens_per_s * fpt / args.peak_flops,
            "peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
            "loss": loss_value, "params": params, "flops_per_token": fpt}


def main() -> None:
    p = argparse.ArgumentParser(description="Llama training throughput in transformers, eager "
                                            "and torch.compile")
    p.add_argument("--shape", default="llama-3.2-1b", choices=LLAMA_SHAPES)
    p.add_argument("--write-config", metavar="DIR",
                   help="write the shape's config.json into DIR and exit (dsrun --model_name DIR)")
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", default="eager,compile", help="from eager,compile")
    p.add_argument("--peak-flops", type=float, default=989e12,
                   help="the device's dense bf16 FLOP/s (default: H100 SXM)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = p.parse_args()
    if args.write_config:
        write_config(args.shape, args.write_config)
        print(f"llama_peer: {args.shape} config.json in {args.write_config}")
        return
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - {"eager", "compile"}
    if unknown or args.steps < 1:
        p.error(f"unknown modes {sorted(unknown)}" if unknown else "--steps must be at least 1")

    import transformers
    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = config_dict(args.shape)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"llama_peer: {args.shape}, micro-batch {args.micro_batch} x {args.seq_len} tokens, "
          f"{gpu or device}, torch {torch.__version__}, transformers {transformers.__version__}")
    rows = []
    for mode in modes:
        free_device_memory(device)
        try:
            rows.append(run_mode(mode, cfg, args, device))
        except Exception as e:  # a mode that cannot run (OOM, no compiler) is a row
            rows.append({"mode": mode, "error": first_line(e)})
    free_device_memory(device)
    print_table(rows)
    if args.json:
        print(json.dumps({"bench": "llama_peer", "shape": args.shape, "device": str(device),
                          "torch": torch.__version__, "transformers": transformers.__version__,
                          "gpu": gpu, "micro_batch": args.micro_batch, "seq_len": args.seq_len,
                          "rows": rows}))


if __name__ == "__main__":
    main()
