#!/usr/bin/env python3
# DeepSpeed training the same GPT as dsrun (gpt_peer.py's model: engine/model/gpt.cc module for
# module), the peer of `dsrun bench` for ZeRO and offload: one process, one GPU (or the CPU with
# DS_ACCELERATOR=cpu and Gloo), a ZeRO stage with or without CPU offload, DeepSpeed's own
# optimizer (FusedAdam on the GPU, DeepSpeedCPUAdam when offloaded: its fastest; both JIT-build
# with ninja on first use), bf16 on a GPU as dsrun's bench runs it, and at stage 3 the model built
# under deepspeed.zero.Init (partitioned construction, DeepSpeed at its best for large models).
#
# At stage 3, zero.Init partitions each submodule as its constructor returns, so gpt_peer's
# re-initialisation of finished submodules (GPT-2's N(0, 0.02)) reaches empty tensors and they keep
# PyTorch's default initialisation: the first loss is higher (~43 on the tiny preset), the
# step's cost is the same.
#
# Reports step time, tokens/s, the GPU's peak and the process's peak host memory (--json: one
# line). With --save DIR it saves a checkpoint after the timed steps; with --resume DIR it loads
# the checkpoint there and runs one step, and reports the load's time and the time from
# --t0 (the launching shell's clock, `date +%s.%N`, so Python's and DeepSpeed's imports count, as
# dsrun's start-up does) to that step done: time to the first resumed step.
#
# On the GPU machine (wheels: ../shared/wheels/deepspeed, installed with pip --target /tmp/ds):
#   RANK=0 LOCAL_RANK=0 WORLD_SIZE=1 MASTER_ADDR=127.0.0.1 MASTER_PORT=29511 PYTHONPATH=/tmp/ds \
#     /opt/torch/.venv/bin/python3 bench/gpu/ds_peer.py --preset gpt2-124m --micro-batch 8 \
#     --stage 2 --offload optimizer --json
import argparse
import json
import os
import resource
import sys
import time

T_IMPORT = time.time()

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from gpt_peer import GPT, PRESETS, make_config  # noqa: E402


def ds_config(args, on_gpu: bool) -> dict:
    zero = {"stage": args.stage, "overlap_comm": on_gpu, "contiguous_gradients": True}
    if args.offload in ("optimizer", "all"):
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": on_gpu}
    if args.offload == "all":
        zero["offload_param"] = {"device": "cpu", "pin_memory": on_gpu}
    cfg = {
        "train_micro_batch_size_per_gpu": args.micro_batch,
        "gradient_accumulation_steps": 1,
        "gradient_clipping": 1.0,
        "optimizer": {"type": "AdamW",
                      "params": {"lr": 6e-4, "betas": [0.9, 0.95], "weight_decay": 0.1}},
        "zero_optimization": zero,
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if on_gpu:
        cfg["bf16"] = {"enabled": True}
    return cfg


def build_engine(args, cfg, device):
    import deepspeed

    on_gpu = device.type == "cuda"
    config = ds_config(args, on_gpu)
    torch.manual_seed(1337)
    if args.stage == 3:
        with deepspeed.zero.Init(config_dict_or_path=config,
                                 remote_device="cpu" if args.offload == "all" else None,
                                 pin_memory=on_gpu):
            model = GPT(cfg)
    else:
        model = GPT(cfg).to(device)
    if args.activation_checkpointing:  # as dsrun's model.activation_checkpointing: per block
        import torch.utils.checkpoint as checkpoint

        for block in model.h:
            block.forward = (lambda f: lambda x: checkpoint.checkpoint(f, x, use_reentrant=False))(
                block.forward)
    engine, _, _, _ = deepspeed.initialize(model=model, model_parameters=model.parameters(),
                                           config=config)
    return engine


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def step(engine, cfg, args, device):
    B, T = args.micro_batch, cfg.seq_len
    idx = torch.randint(cfg.vocab, (B, T), device=device)  # (B, T) token ids
    targets = torch.randint(cfg.vocab, (B, T), device=device)  # (B, T)
    loss = engine(idx, targets)
    engine.backward(loss)
    engine.step()
    return loss


def host_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: KiB


def main() -> None:
    p = argparse.ArgumentParser(description="DeepSpeed ZeRO training throughput of dsrun's GPT")
    p.add_argument("--preset", default="gpt2-124m", choices=sorted(PRESETS))
    p.add_argument("--n-layer", type=int, help="override the preset's layers (capacity runs)")
    p.add_argument("--d-model", type=int, help="override the preset's width (heads: d_model/128)")
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each block in backward (torch.utils.checkpoint)")
    p.add_argument("--micro-batch", type=int, default=8)
    p.add_argument("--stage", type=int, default=2, choices=[0, 1, 2, 3])
    p.add_argument("--offload", default="none", choices=["none", "optimizer", "all"])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--save", help="save a checkpoint here after the timed steps")
    p.add_argument("--resume", help="load the checkpoint here, then run one step (timed)")
    p.add_argument("--t0", type=float, help="the launching shell's clock at start (date +%%s.%%N)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = p.parse_args()
    if args.offload == "all" and args.stage != 3:
        p.error("--offload all (parameters too) needs --stage 3, as in DeepSpeed")
    if args.offload != "none" and args.stage == 0:
        p.error("offload needs stage 1-3, as in DeepSpeed")
    for k, v in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                 "MASTER_PORT": "29511"}.items():
        os.environ.setdefault(k, v)

    import deepspeed

    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)  # "cuda" alone has no index
        torch.backends.cuda.matmul.allow_tf32 = True
    deepspeed.init_distributed(dist_backend="nccl" if device.type == "cuda" else "gloo")
    cfg = make_config(args.preset, args.seq_len, pad_vocab_to=1)  # dsrun's vocabulary exactly
    if args.n_layer or args.d_model:
        n_layer = args.n_layer or cfg.n_layer
        d_model = args.d_model or cfg.d_model
        cfg = type(cfg)(n_layer, max(1, d_model // 128), d_model, cfg.vocab, cfg.seq_len,
                        cfg.vocab_padded)
    with torch.device("meta"):
        meta = GPT(cfg)
        params = sum(t.numel() for t in meta.parameters())
        flops_per_token = meta.flops_per_token()
    engine = build_engine(args, cfg, device)
    out = {"bench": "ds_peer", "deepspeed": deepspeed.__version__, "torch": torch.__version__,
           "device": str(device),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "preset": args.preset, "n_layer": cfg.n_layer, "d_model": cfg.d_model,
           "params": params, "flops_per_token": flops_per_token, "stage": args.stage,
           "offload": args.offload, "micro_batch": args.micro_batch, "seq_len": cfg.seq_len}
    if args.resume:
        t_load = time.time()
        path, _ = engine.load_checkpoint(args.resume)
        if path is None:
            raise SystemExit(f"ds_peer: no checkpoint loaded from {args.resume}")
        sync(device)
        out["load_s"] = time.time() - t_load
        loss = step(engine, cfg, args, device).item()
        sync(device)
        out["first_step_done_s"] = time.time() - (args.t0 or T_IMPORT)
        out["loss"] = loss
    else:
        for _ in range(args.warmup):
            step(engine, cfg, args, device)
        sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        for _ in range(args.steps):
            loss = step(engine, cfg, args, device)
        sync(device)
        seconds = time.perf_counter() - t
        out["step_ms"] = 1e3 * seconds / args.steps
        out["tokens_per_s"] = args.steps * args.micro_batch * cfg.seq_len / seconds
        out["loss"] = loss.item()
        if args.save:
            t = time.time()
            engine.save_checkpoint(args.save)
            out["save_s"] = time.time() - t
    out["gpu_peak_bytes"] = torch.cuda.max_memory_allocated() if device.type == "cuda" else None
    out["host_peak_bytes"] = host_peak_bytes()
    print(f"ds_peer: {args.preset} {cfg.n_layer}x{cfg.d_model} ({params / 1e6:.1f}M parameters), "
          f"stage {args.stage}, offload {args.offload}, micro-batch {args.micro_batch} x "
          f"{cfg.seq_len}, {out['gpu'] or device}, DeepSpeed {deepspeed.__version__}")
    for k in ("step_ms", "tokens_per_s", "save_s", "load_s", "first_step_done_s"):
        if k in out:
            print(f"  {k:<18} {out[k]:.3f}")
    if out["gpu_peak_bytes"] is not None:
        print(f"  {'gpu peak GiB':<18} {out['gpu_peak_bytes'] / 2**30:.2f}")
    print(f"  {'host peak GiB':<18} {out['host_peak_bytes'] / 2**30:.2f}")
    if args.json:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
