#!/usr/bin/env python3
# Training throughput of dstrain's GPT (engine/model/gpt.cc: GPT-2's architecture exactly) written
# the way a PyTorch user writes it, in eager mode and under torch.compile. These are the peers that
# `dsrun bench` (bench/gpu/run.sh zero-bench) is held against on one GPU: same model, same
# micro-batch, same sequence length, same FLOPs-per-token formula, so tokens/s and MFU compare.
# The step is nanoGPT's recipe at its best settings: fp32 parameters, bf16 autocast around forward
# and loss, fused AdamW, TF32 matmuls, the embedding (and so the tied head) padded to a multiple of
# 64 rows (nanoGPT's vocab_size=50304 for GPT-2's 50257; --no-pad-vocab keeps 50257), random token
# batches drawn from the real vocabulary and made on the device (data is not what we measure), no
# host sync inside the step. FLOPs per token count the real vocabulary, as dsrun's do.
#
# On the GPU machine (from the repository root):
#   /opt/torch/.venv/bin/python3 bench/gpu/gpt_peer.py --preset gpt2-124m --micro-batch 8 \
#       --seq-len 1024 --json
#   /opt/torch/.venv/bin/python3 bench/gpu/gpt_peer.py --preset gpt-1.3b --micro-batch 8 --json
# (gpt-1.3b, eager then compile: about 2.5 minutes on an H100, most of it compiling.)
# Add --modes eager,compile,compile-max for max-autotune (long compile; not run by default).
import argparse
import gc
import json
import math
import time
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass(frozen=True)
class GptConfig:
    n_layer: int
    n_head: int
    d_model: int
    vocab: int  # tokens the data can hold (GPT-2: 50257)
    seq_len: int
    vocab_padded: int  # rows of the embedding and the tied head: vocab rounded up (nanoGPT: 50304)


# (n_layer, n_head, d_model, vocab), as dstrain's model presets.
PRESETS = {
    "tiny": (2, 2, 64, 256),
    "gpt2-124m": (12, 12, 768, 50257),
    "gpt-1.3b": (24, 16, 2048, 50257),
}


def make_config(preset: str, seq_len: int, pad_vocab_to: int = 1) -> GptConfig:
    # pad_vocab_to 1 (the default, for ckpt_peer.py and fsdp_peer.py): the embedding has exactly
    # `vocab` rows, as dstrain's parameters and checkpoints do.
    n_layer, n_head, d_model, vocab = PRESETS[preset]
    padded = -(-vocab // pad_vocab_to) * pad_vocab_to
    return GptConfig(n_layer, n_head, d_model, vocab, seq_len, padded)


# ---------------------------------------------------------------------------------------------
# The model: gpt.cc's, module for module. No dropout, no lm_head (the output is tied to wte).
# With vocab_padded > vocab the padding rows are ordinary parameters, as in nanoGPT: no token
# selects them, and the loss pushes their logits down.


class Block(nn.Module):
    def __init__(self, cfg: GptConfig):
        super().__init__()
        c = cfg.d_model
        self.n_head = cfg.n_head
        self.ln_1 = nn.LayerNorm(c)
        self.attn_c_attn = nn.Linear(c, 3 * c)
        self.attn_c_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c)
        self.mlp_c_fc = nn.Linear(c, 4 * c)
        self.mlp_c_proj = nn.Linear(4 * c, c)
        # GPT-2: N(0, 0.02) weights, zero biases, residual projections scaled by 1/sqrt(2L).
        residual_std = 0.02 / math.sqrt(2 * cfg.n_layer)
        for lin, std in ((self.attn_c_attn, 0.02), (self.mlp_c_fc, 0.02),
                         (self.attn_c_proj, residual_std), (self.mlp_c_proj, residual_std)):
            nn.init.normal_(lin.weight, 0.0, std)
            nn.init.zeros_(lin.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, C = x.shape
        hs = C // self.n_head
        q, k, v = self.attn_c_attn(self.ln_1(x)).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, hs).transpose(1, 2) for t in (q, k, v))  # (B,nh,T,hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_c_proj(y.transpose(1, 2).contiguous().view(B, T, C))
        return x + self.mlp_c_proj(F.gelu(self.mlp_c_fc(self.ln_2(x)), approximate="tanh"))


class GPT(nn.Module):
    def __init__(self, cfg: GptConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_padded, cfg.d_model)  # (Vp, C), also the output head
        self.wpe = nn.Embedding(cfg.seq_len, cfg.d_model)  # (seq_len, C)
        nn.init.normal_(self.wte.weight, 0.0, 0.02)
        nn.init.normal_(self.wpe.weight, 0.0, 0.01)
        self.h = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.d_model)

    def forward(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        T = idx.size(1)
        pos = torch.arange(T, device=idx.device)
        x = self.wte(idx) + self.wpe(pos)  # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = F.linear(self.ln_f(x), self.wte.weight)  # (B, T, Vp)
        return F.cross_entropy(logits.float().view(-1, logits.size(-1)), targets.view(-1))

    def counted_parameters(self) -> int:
        # The parameters dstrain's GPT has, less wpe (a lookup): the padding rows are left out.
        cfg = self.cfg
        padding = (cfg.vocab_padded - cfg.vocab) * cfg.d_model
        return sum(p.numel() for p in self.parameters()) - self.wpe.weight.numel() - padding

    def flops_per_token(self) -> float:
        # As GptImpl::flops_per_token: 6N for the matmuls plus the attention scores and values,
        # 12 * L * C * T, with N counted on the real vocabulary, so that a padded peer and dsrun
        # share one formula and their MFU ratio is their tokens/s ratio. (nanoGPT's estimate_mfu
        # counts its 50304 rows: 0.03% more FLOPs at 124M, 0.007% at 1.3B.)
        attention = 12.0 * self.cfg.n_layer * self.cfg.d_model * self.cfg.seq_len
        return 6.0 * self.counted_parameters() + attention


def build_model(cfg: GptConfig, device: torch.device, seed: int = 1337) -> GPT:
    torch.manual_seed(seed)
    return GPT(cfg).to(device)


def make_adamw(model: nn.Module, device: torch.device) -> torch.optim.AdamW:
    # fused=True is the fastest AdamW on CUDA; on CPU the user keeps the default (foreach).
    fused = True if device.type == "cuda" else None
    return torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                             fused=fused)


# ---------------------------------------------------------------------------------------------
# Timing one mode.


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_steps(step, warmup: int, steps: int, device: torch.device) -> tuple:
    """Runs `step` (returning the loss tensor) `warmup` times untimed (compile modes compile
    there), then `steps` times timed with no host sync inside: (seconds, the last loss)."""
    for _ in range(warmup):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync(device)
    seconds = time.perf_counter() - t0
    loss_value = loss.item()  # the only host read, after the clock stopped
    if not math.isfinite(loss_value):
        raise RuntimeError(f"loss is {loss_value} after {warmup + steps} steps")
    return seconds, loss_value


def run_mode(mode: str, cfg: GptConfig, args, device: torch.device) -> dict:
    model = build_model(cfg, device)
    flops_per_token = model.flops_per_token()
    opt = make_adamw(model, device)
    if mode == "compile":
        step_model = torch.compile(model)
    elif mode == "compile-max":
        step_model = torch.compile(model, mode="max-autotune-no-cudagraphs")
    else:
        step_model = model
    B, T = args.micro_batch, cfg.seq_len

    def step() -> torch.Tensor:
        idx = torch.randint(cfg.vocab, (B, T), device=device)  # (B, T) token ids, real ones only
        targets = torch.randint(cfg.vocab, (B, T), device=device)  # (B, T)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            loss = step_model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    seconds, loss_value = time_steps(step, args.warmup, args.steps, device)
    tokens_per_s = args.steps * B * T / seconds
    return {
        "mode": mode,
        "step_ms": 1e3 * seconds / args.steps,
        "tokens_per_s": tokens_per_s,
        "mfu": tokens_per_s * flops_per_token / args.peak_flops,
        "peak_bytes": torch.cuda.max_memory_allocated() if device.type == "cuda" else None,
        "loss": loss_value,
    }


def free_device_memory(device: torch.device) -> None:
    # Drops the previous mode's model, optimizer and compiled graphs so each mode's peak memory
    # is its own.
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def print_table(rows: list) -> None:
    print(f"{'mode':<12} {'step ms':>10} {'tokens/s':>12} {'MFU':>7} {'peak GiB':>9}")
    for r in rows:
        if "error" in r:
            print(f"{r['mode']:<12} error: {r['error']}")
            continue
        peak = "-" if r["peak_bytes"] is None else f"{r['peak_bytes'] / 2**30:.2f}"
        print(f"{r['mode']:<12} {r['step_ms']:>10.2f} {r['tokens_per_s']:>12.0f} "
              f"{100 * r['mfu']:>6.2f}% {peak:>9}")


def first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def main() -> None:
    p = argparse.ArgumentParser(description="GPT training throughput in PyTorch eager and compile")
    p.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS))
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--modes", default="eager,compile", help="from eager,compile,compile-max")
    p.add_argument("--peak-flops", type=float, default=989e12,
                   help="the device's dense bf16 FLOP/s (default: H100 SXM)")
    p.add_argument("--pad-vocab-to", type=int, default=64,
                   help="round the embedding's rows up to a multiple of this (nanoGPT: 64, "
                        "GPT-2's 50257 -> 50304); targets stay below the real vocabulary")
    p.add_argument("--no-pad-vocab", dest="pad_vocab_to", action="store_const", const=1,
                   help="keep the embedding at the real vocabulary (50257 rows for GPT-2)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = p.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - {"eager", "compile", "compile-max"}
    if unknown or args.steps < 1:
        p.error(f"unknown modes {sorted(unknown)}" if unknown else "--steps must be at least 1")
    if args.pad_vocab_to < 1:
        p.error("--pad-vocab-to must be at least 1")

    device = torch.device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    cfg = make_config(args.preset, args.seq_len, args.pad_vocab_to)
    with torch.device("meta"):  # shapes only: no memory, no init time
        meta = GPT(cfg)
        params, flops_per_token = meta.counted_parameters(), meta.flops_per_token()
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    padding = (f"padded to {cfg.vocab_padded}" if cfg.vocab_padded != cfg.vocab else "unpadded")
    print(f"gpt_peer: {args.preset} ({params / 1e6:.1f}M parameters without wpe and padding), "
          f"vocab {cfg.vocab} {padding}, micro-batch {args.micro_batch} x {args.seq_len} tokens, "
          f"{gpu or device}, torch {torch.__version__}")

    rows = []
    for mode in modes:
        free_device_memory(device)
        try:
            rows.append(run_mode(mode, cfg, args, device))
        except Exception as e:  # a mode that cannot run (no compiler, OOM) is a row, not the end
            rows.append({"mode": mode, "error": first_line(e)})
    free_device_memory(device)
    print_table(rows)
    if args.json:
        print(json.dumps({
            "bench": "gpt_peer", "preset": args.preset, "device": str(device),
            "torch": torch.__version__, "gpu": gpu, "micro_batch": args.micro_batch,
            "seq_len": args.seq_len, "params": params, "vocab": cfg.vocab,
            "vocab_padded": cfg.vocab_padded, "flops_per_token": flops_per_token, "rows": rows,
        }))


if __name__ == "__main__":
    main()
