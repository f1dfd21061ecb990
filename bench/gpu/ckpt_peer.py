#!/usr/bin/env python3
# Time to checkpoint a full training state (fp32 GPT weights plus AdamW's two moments, ~16 GB for
# gpt-1.3b) with the tools a PyTorch user would pick, each at its best settings: torch.save + fsync,
# DCP's save, and DCP's async_save with the thread and with the process checkpointer. These are the
# peers dstrain's checkpoint numbers are held against. For each: the stall (how long training
# waits), the time until the bytes are durable (fsynced), the bytes on disk, and for the
# synchronous peers a cold load back onto the device. The device-to-host copy of the same bytes
# into pinned memory is the bound no checkpoint that starts on the GPU can beat.
#
# On the GPU machine (from the repository root; the state is ~16 GB on disk, one checkpoint at a
# time, so --dir needs ~20 GB free):
#   /opt/torch/.venv/bin/python3 bench/gpu/ckpt_peer.py --preset gpt-1.3b --dir /tmp/ckpt-peer \
#       --json
# (about 4 minutes on an H100 host; the GPT-2 124M state, --preset gpt2-124m, takes under one.)
import argparse
import gc
import json
import os
import shutil
import socket
import time

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import FileSystemReader, FileSystemWriter
from torch.distributed.checkpoint.state_dict_saver import AsyncCheckpointerType

from gpt_peer import PRESETS, build_model, first_line, make_adamw, make_config, sync

ALL_PEERS = ("torch_save", "dcp", "dcp_async", "dcp_async_process")


def build_state(preset: str, seq_len: int, device: torch.device):
    """The model and optimizer after one real AdamW step, so exp_avg and exp_avg_sq exist."""
    model = build_model(make_config(preset, seq_len), device)
    opt = make_adamw(model, device)
    for p in model.parameters():
        p.grad = torch.randn_like(p).mul_(1e-3)
    opt.step()
    opt.zero_grad(set_to_none=True)
    sync(device)
    return model, opt, {"model": model.state_dict(), "optim": opt.state_dict()}


def tensors_of(obj) -> list:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        obj = list(obj.values())
    if isinstance(obj, (list, tuple)):
        return [t for item in obj for t in tensors_of(item)]
    return []


def d2h_bound(tensors: list, device: torch.device) -> float:
    """Bytes/s of copying every state tensor into preallocated (pinned, on CUDA) host tensors."""
    pin = device.type == "cuda"
    dst = [torch.empty(t.shape, dtype=t.dtype, pin_memory=pin) for t in tensors]
    for _ in range(2):  # the first pass faults the pages in; time the second
        sync(device)
        t0 = time.perf_counter()
        for src, d in zip(tensors, dst):
            d.copy_(src, non_blocking=True)
        sync(device)
        seconds = time.perf_counter() - t0
    del dst
    gc.collect()
    if pin:
        torch._C._host_emptyCache()  # give the pinned pages back before DCP pins its own
    return sum(t.numel() * t.element_size() for t in tensors) / seconds


# ---------------------------------------------------------------------------------------------
# Files.


def files_under(path: str) -> list:
    if os.path.isfile(path):
        return [path]
    return [os.path.join(d, f) for d, _, names in os.walk(path) for f in names]


def stored_bytes(path: str) -> int:
    return sum(os.path.getsize(f) for f in files_under(path))


def evict_page_cache(path: str) -> None:
    # The files were fsynced, so their pages are clean and the kernel may drop them: a load that
    # follows reads the disk, as a restart would, not the page cache.
    for f in files_under(path):
        fd = os.open(f, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def remove(path: str) -> None:
    if os.path.isdir(path):
        shutil.rmtree(path)
    elif os.path.exists(path):
        os.unlink(path)
    os.sync()  # the next peer starts with no dirty pages of this one still being written


# ---------------------------------------------------------------------------------------------
# Peers. Each returns (stall s, durable s, stored bytes, load s or None) and leaves nothing on disk.


def peer_torch_save(state, path: str, device: torch.device):
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    durable = time.perf_counter() - t0
    size = stored_bytes(path)
    evict_page_cache(path)
    t0 = time.perf_counter()
    loaded = torch.load(path, map_location=device, weights_only=True)
    sync(device)
    load = time.perf_counter() - t0
    del loaded
    return durable, durable, size, load


def peer_dcp(state, path: str, device: torch.device):
    t0 = time.perf_counter()
    dcp.save(state, storage_writer=FileSystemWriter(path, thread_count=16))  # fsyncs each file
    durable = time.perf_counter() - t0
    size = stored_bytes(path)
    evict_page_cache(path)
    t0 = time.perf_counter()
    dcp.load(state, storage_reader=FileSystemReader(path))  # in place, into the live tensors
    sync(device)
    return durable, durable, size, time.perf_counter() - t0


def dcp_async_twice(state, path: str, device: torch.device, kind: AsyncCheckpointerType):
    # One writer for both saves: it is also the stager, and its cache of pinned host tensors lives
    # on it, so the second save (the steady state we report) reuses the first one's buffers.
    # checkpoint_id points the same writer at a fresh directory each time. Pinning needs a CUDA
    # driver, so on CPU the cache is off (and there is no device-to-host copy to save anyway).
    writer = FileSystemWriter(path + "-0", thread_count=8,
                              cache_staged_state_dict=device.type == "cuda")
    for i in range(2):
        target = f"{path}-{i}"
        t0 = time.perf_counter()
        response = dcp.async_save(state, checkpoint_id=target, storage_writer=writer,
                                  async_checkpointer_type=kind)
        stall = time.perf_counter() - t0
        # torch 2.11 returns a Future here; stagers that stage asynchronously return an
        # AsyncSaveResponse whose upload_completion is the Future.
        getattr(response, "upload_completion", response).result()
        durable = time.perf_counter() - t0
        size = stored_bytes(target)
        remove(target)
    writer.close()
    return stall, durable, size, None


def run_peer(name: str, state, base: str, device: torch.device) -> dict:
    path = os.path.join(base, name + (".pt" if name == "torch_save" else ""))
    try:
        if name == "torch_save":
            stall, durable, size, load = peer_torch_save(state, path, device)
        elif name == "dcp":
            stall, durable, size, load = peer_dcp(state, path, device)
        else:
            kind = AsyncCheckpointerType.PROCESS if name.endswith("process") else \
                AsyncCheckpointerType.THREAD
            stall, durable, size, load = dcp_async_twice(state, path, device, kind)
        return {"peer": name, "stall_s": stall, "durable_s": durable, "stored_bytes": size,
                "load_s": load}
    except Exception as e:  # a peer that cannot run here is a row, not the end
        return {"peer": name, "stall_s": None, "durable_s": None, "stored_bytes": None,
                "load_s": None, "error": first_line(e)}
    finally:
        for p in (path, path + "-0", path + "-1"):
            remove(p)


# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_one_rank_group(port: int, device: torch.device) -> None:
    # DCP's collectives and the process checkpointer need a process group; dsrun users have one.
    # async_save needs a CPU backend in it. The process checkpointer's child process starts its
    # own store on a free port at MASTER_ADDR (else the host's name), so pin that to loopback.
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    backend = "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
        backend = "cpu:gloo,cuda:nccl"
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port or free_port()}",
                            rank=0, world_size=1)


def print_table(rows: list, state_bytes: int) -> None:
    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    print(f"{'peer':<18} {'stall s':>8} {'durable s':>10} {'GB/s':>7} {'on disk GB':>11} "
          f"{'load s':>8} {'load GB/s':>10}")
    for r in rows:
        if "error" in r:
            print(f"{r['peer']:<18} error: {r['error']}")
            continue
        load_gbps = None if r["load_s"] is None else state_bytes / r["load_s"] / 1e9
        print(f"{r['peer']:<18} {r['stall_s']:>8.3f} {r['durable_s']:>10.3f} "
              f"{state_bytes / r['durable_s'] / 1e9:>7.2f} {r['stored_bytes'] / 1e9:>11.3f} "
              f"{num(r['load_s'], '.3f'):>8} {num(load_gbps, '.2f'):>10}")


def main() -> None:
    p = argparse.ArgumentParser(description="training-state checkpoint via torch.save and DCP")
    p.add_argument("--preset", default="gpt-1.3b", choices=sorted(PRESETS))
    p.add_argument("--seq-len", type=int, default=1024)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dir", required=True, help="where the checkpoints go (one at a time)")
    p.add_argument("--peers", default=",".join(ALL_PEERS), help="from " + ",".join(ALL_PEERS))
    p.add_argument("--port", type=int, default=0, help="the process group's port (0: any free)")
    p.add_argument("--json", action="store_true", help="end with one line of JSON")
    args = p.parse_args()
    peers = [x for x in args.peers.split(",") if x]
    if set(peers) - set(ALL_PEERS):
        p.error(f"unknown peers {sorted(set(peers) - set(ALL_PEERS))}")

    device = torch.device(args.device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())  # set_device needs an index
    os.makedirs(args.dir, exist_ok=True)
    init_one_rank_group(args.port, device)
    model, opt, state = build_state(args.preset, args.seq_len, device)
    tensors = tensors_of(state)
    state_bytes = sum(t.numel() * t.element_size() for t in tensors)
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    print(f"ckpt_peer: {args.preset} training state, {len(tensors)} tensors, {state_bytes} bytes "
          f"({state_bytes / 1e9:.3f} GB), {gpu or device}, torch {torch.__version__}, "
          f"dir {args.dir} ({shutil.disk_usage(args.dir).free / 1e9:.1f} GB free)")
    d2h_bps = d2h_bound(tensors, device)
    print(f"device-to-host copy bound: {d2h_bps / 1e9:.2f} GB/s "
          f"({state_bytes / d2h_bps:.3f} s for the state)")

    rows = []
    for name in peers:
        os.sync()
        rows.append(run_peer(name, state, args.dir, device))
    print_table(rows, state_bytes)
    dist.destroy_process_group()
    if args.json:
        print(json.dumps({
            "bench": "ckpt_peer", "preset": args.preset, "device": str(device),
            "torch": torch.__version__, "gpu": gpu, "state_bytes": state_bytes,
            "d2h_bps": d2h_bps, "rows": rows,
        }))


if __name__ == "__main__":
    main()
