#!/usr/bin/env python3
# Training throughput of dstrain's GPT (bench/gpu/gpt_peer.py's model, module for module) under
# PyTorch FSDP (fully_shard, FSDP2) on every GPU of a node: the peer of `dsrun bench` at ZeRO
# stages 1-3 on several GPUs (bench/gpu/run.sh mgpu). At its best settings: each block and the
# root wrapped, bf16 parameters and gradients in compute with fp32 reductions
# (MixedPrecisionPolicy), fused AdamW on the fp32 shards, TF32, random token batches made on the
# device, no host sync in the step. --reshard true is ZeRO-3-like (parameters gathered per block
# in forward and again in backward), false ZeRO-2-like (kept gathered between forward and
# backward).
#
# On the GPU machine, from the repository root:
#   /opt/torch/.venv/bin/python3 -m torch.distributed.run --standalone --nproc-per-node 2 \
#       bench/gpu/fsdp_peer.py --preset gpt-1.3b --micro-batch 4 --json
# Rank 0 prints a table row and, with --json, one line of JSON.
import argparse
import json
import math
import os
import sys
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt_peer import PRESETS, build_model, make_config  # noqa: E402  (same directory)


def main() -> None:
    p = argparse.ArgumentParser(description="GPT training throughput under PyTorch FSDP2")
    p.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS))
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--micro-batch", type=int, default=4, help="per GPU")
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--reshard", default="true", choices=["true", "false"])
    p.add_argument("--peak-flops", type=float, default=989e12, help="per device (H100 bf16 dense)")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = torch.device("cuda", local) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    cfg = make_config(args.preset, args.seq_len)
    model = build_model(cfg, device)
    flops_per_token = model.flops_per_token()
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    reshard = args.reshard == "true"
    for block in model.h:
        fully_shard(block, mp_policy=mp, reshard_after_forward=reshard)
    fully_shard(model, mp_policy=mp, reshard_after_forward=reshard)
    opt = torch.optim.AdamW(model.parameters(), lr=6e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            fused=True if cuda else None)
    B, T = args.micro_batch, cfg.seq_len
    gen = torch.Generator(device=device).manual_seed(1000 + rank)  # each rank its own batches

    def step() -> torch.Tensor:
        idx = torch.randint(cfg.vocab, (B, T), device=device, generator=gen)
        targets = torch.randint(cfg.vocab, (B, T), device=device, generator=gen)
        loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    if cuda:
        torch.cuda.synchronize()
    dist.barrier()
    seconds = time.perf_counter() - t0
    loss_value = loss.item()
    if not math.isfinite(loss_value):
        raise RuntimeError(f"loss is {loss_value}")
    tokens_per_s = args.steps * B * T * world / seconds
    row = {
        "peer": "fsdp2",
        "preset": args.preset,
        "gpus": world,
        "reshard_after_forward": reshard,
        "micro_batch": B,
        "step_ms": 1e3 * seconds / args.steps,
        "tokens_per_s": tokens_per_s,
        "tokens_per_s_per_gpu": tokens_per_s / world,
        "mfu": tokens_per_s * flops_per_token / (args.peak_flops * world),
        "peak_bytes": torch.cuda.max_memory_allocated() if cuda else None,
        "torch": torch.__version__,
    }
    if rank == 0:
        print(f"fsdp2 {args.preset} on {world} {'GPU' if cuda else 'CPU rank'}(s), reshard "
              f"{args.reshard}: {row['step_ms']:.1f} ms/step, {tokens_per_s:,.0f} tokens/s "
              f"({row['tokens_per_s_per_gpu']:,.0f} per rank), MFU {100 * row['mfu']:.1f}%")
        if args.json:
            print(json.dumps(row))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
