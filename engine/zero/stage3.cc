// ZeRO stage 3: parameters partitioned per tensor (ckpt::PartitionForRank's stage 3 layout:
// each tensor padded to world_size * alignment, rank r owning the r-th piece), gathered unit by
// unit around the forward and backward passes.
//
// A unit (one of the model's unit_prefixes(), a transformer block) runs through UnitFunction:
//   forward:  gather the unit (prefetch the next), run it without autograd, free it;
//   backward: gather it again (prefetch the previous), rerun it with autograd, backpropagate,
//             reduce-scatter its gradients to their owners, free it.
// So a unit's weights are whole only while it runs, and no activation inside a unit outlives
// its forward: stage 3 costs one extra forward per unit, as activation checkpointing does.
// Parameters outside every unit (embeddings, the final norm) are gathered for the whole micro
// step. Parameters under stage3_param_persistence_threshold elements stay gathered.
#include <ATen/ATen.h>
#include <c10/core/StreamGuard.h>
#include <c10/core/impl/VirtualGuardImpl.h>
#include <torch/autograd.h>

#include <chrono>
#include <future>
#include <span>

#include "ckpt/partition.h"
#include "engine/zero/internal/zero_state.h"

namespace ds::engine {
namespace {

struct UnitFunction : public torch::autograd::Function<UnitFunction> {
  static at::Tensor forward(torch::autograd::AutogradContext* ctx, at::Tensor x, int64_t impl,
                            int64_t unit) {
    auto* z = reinterpret_cast<ZeroOptimizer::Impl*>(impl);
    ctx->save_for_backward({x});
    ctx->saved_data["impl"] = impl;
    ctx->saved_data["unit"] = unit;
    const int u = static_cast<int>(unit);
    Status s = z->EnsureGathered(u);
    if (!s.ok()) z->Throw(s);
    z->Prefetch(u + 1, +1);
    at::Tensor y;
    {
      torch::NoGradGuard no_grad;
      y = z->unit_fns[u](x);
    }
    z->Release(u);
    return y;
  }

  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad_out) {
    auto* z = reinterpret_cast<ZeroOptimizer::Impl*>(ctx->saved_data["impl"].toInt());
    const int u = static_cast<int>(ctx->saved_data["unit"].toInt());
    Status s = z->EnsureGathered(u);
    if (!s.ok()) z->Throw(s);
    z->Prefetch(u - 1, -1);
    at::Tensor x = ctx->get_saved_variables()[0].detach().requires_grad_(true);
    {
      torch::AutoGradMode enable(true);
      at::Tensor y = z->unit_fns[u](x);
      torch::autograd::backward({y}, {grad_out[0]});
    }
    s = z->ReduceUnitGrads(u);
    if (!s.ok()) z->Throw(s);
    z->Release(u);
    return {x.grad(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace

void ZeroOptimizer::Impl::Throw(const Status& s) {
  if (sticky.ok()) sticky = s;
  TORCH_CHECK(false, s.message());
}

// ---- set-up

Status ZeroOptimizer::Impl::SetupStage3(const std::vector<at::Tensor>& fp32) {
  const int64_t W = o.world_size;
  const std::vector<std::string> prefixes = model->unit_prefixes();
  units.assign(prefixes.size() + 1, {});
  unit_fns.assign(units.size(), nullptr);
  gathers.resize(units.size());
  unit_reduced.assign(units.size(), false);
  part_len = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    ZeroTensor& t = tensors[i];
    t.piece = static_cast<int64_t>(ckpt::PartitionLength(static_cast<uint64_t>(t.numel),
                                                         static_cast<uint32_t>(W), o.alignment));
    t.part_offset = part_len;
    part_len += t.piece;
    for (size_t u = 0; u < prefixes.size(); ++u) {
      if (t.name.rfind(prefixes[u], 0) == 0) {
        t.unit = static_cast<int>(u) + 1;
        break;
      }
    }
    units[t.unit].push_back(static_cast<int>(i));
    t.persistent = t.numel <= o.persistence_threshold;
  }
  // Swapped and deferred: no master here at all (Initialize writes it to the swap files).
  if (!swapping() || !fp32.empty()) master = at::zeros({part_len}, state_opts);
  for (size_t i = 0; i < fp32.size(); ++i) {  // none when deferred: Initialize fills it
    const ZeroTensor& t = tensors[i];
    at::Tensor padded = at::zeros({t.piece * W}, fp32[i].options());
    padded.narrow(0, 0, t.numel).copy_(fp32[i]);
    master.narrow(0, t.part_offset, t.piece).copy_(padded.narrow(0, t.piece * o.rank, t.piece));
  }
  if (params_swapped()) {
    // On NVMe: the partition's file (preallocated), a built model's weights written into it.
    DS_RETURN_IF_ERROR(OpenParamSwap());
    if (master.defined()) DS_RETURN_IF_ERROR(PublishChunks(master, at::Tensor()));
  } else {
    const bool host = o.offload_param;
    const auto param_opts = at::TensorOptions()
                                .dtype(o.dtype)
                                .device(host ? at::kCPU : o.device)
                                .pinned_memory(host && o.pin_memory && o.device.is_cuda());
    param_part = master.defined() ? master.to(param_opts, /*non_blocking=*/false, /*copy=*/true)
                                  : at::zeros({part_len}, param_opts);
  }
  grad = at::zeros({part_len}, state_opts);
  if (fp32.empty()) {
    // Deferred: the placeholders hold nothing; every tensor is gathered at its first use.
    const at::Tensor empty = at::empty({0}, at::TensorOptions().dtype(o.dtype).device(o.device));
    for (ZeroTensor& t : tensors) t.param.set_data(empty);
  }
  for (int u = 0; u < static_cast<int>(units.size()) && !fp32.empty(); ++u) {
    for (int i : units[u]) {
      tensors[i].fresh = true;  // the model holds rank 0's weights: until the first step, current
      live_elements += tensors[i].numel;
    }
    Release(u);
  }
  model->set_unit_runner(this);
  return Status::OK();
}

// ---- gathering and freeing

Status ZeroOptimizer::Impl::IssueGather(int unit) {
  if (unit < 0 || unit >= static_cast<int>(units.size()) || gathers[unit]) return Status::OK();
  auto g = std::make_unique<PendingGather>();
  g->unit = unit;
  int64_t next = -1;
  for (int i : units[unit]) {
    const ZeroTensor& t = tensors[i];
    if (t.fresh) continue;
    g->tensors.push_back(i);
    g->adjacent = g->adjacent && (next < 0 || t.part_offset == next);
    next = t.part_offset + t.piece;
    g->elements += t.piece;
  }
  if (g->tensors.empty()) return Status::OK();
  g->first = tensors[g->tensors.front()].part_offset;
  g->next = next;
  if (params_swapped()) {
    // On NVMe: the unit's range of the partition (gaps between its pieces included) is read into
    // host memory on a thread of its own, so the read overlaps the units running before this
    // one; the upload and the all-gather follow once it is in (AdvanceRead).
    const bool pin = o.pin_memory && o.device.is_cuda();
    g->read =
        at::empty({g->next - g->first}, at::TensorOptions().dtype(o.dtype).pinned_memory(pin));
    const std::span<std::byte> into(static_cast<std::byte*>(g->read.data_ptr()),
                                    static_cast<size_t>(g->read.nbytes()));
    g->reading = std::async(std::launch::async, [swap = param_swap.get(), at = g->first, into] {
      return swap->ReadBytes(0, at, into);
    });
    gathers[unit] = std::move(g);
    return Status::OK();
  }
  DS_RETURN_IF_ERROR(StartGather(*g, param_part));
  gathers[unit] = std::move(g);
  return Status::OK();
}

Status ZeroOptimizer::Impl::AdvanceRead(PendingGather& g, bool wait) {
  if (!g.reading.valid()) return Status::OK();
  if (!wait && g.reading.wait_for(std::chrono::seconds(0)) != std::future_status::ready) {
    return Status::OK();
  }
  DS_RETURN_IF_ERROR(g.reading.get());
  return StartGather(g, g.read);
}

Status ZeroOptimizer::Impl::DropPendingGathers() {
  Status first;
  for (std::unique_ptr<PendingGather>& g : gathers) {
    if (!g) continue;
    if (g->reading.valid()) {
      Status s = g->reading.get();
      if (first.ok()) first = s;
    } else {
      Status s = g->handle.Wait();  // issued on every rank: completed on every rank
      if (first.ok()) first = s;
    }
    g.reset();
  }
  return first;
}

Status ZeroOptimizer::Impl::StartGather(PendingGather& g, const at::Tensor& part) {
  torch::NoGradGuard no_grad;
  const int64_t base = part.is_same(g.read) ? g.first : 0;  // where `part` starts
  std::vector<at::Tensor> pieces;
  for (int i : g.tensors) {
    pieces.push_back(part.narrow(0, tensors[i].part_offset - base, tensors[i].piece));
  }
  std::optional<c10::StreamGuard> on_side;
  if (g.adjacent && part.is_cpu() && !o.device.is_cpu()) {
    // Offloaded parameters: straight from the page-locked partition (at::cat would first make
    // a pageable copy), on a side stream, so the upload overlaps the units running before this
    // one. The buffers belong to the compute stream; the side stream starts after the work
    // queued there so far (which may still read memory these buffers reuse).
    c10::impl::VirtualGuardImpl device(o.device.type());
    const c10::Stream compute = device.getStream(o.device);
    if (!upload_stream) upload_stream = device.getStreamFromGlobalPool(o.device);
    g.in = at::empty({g.next - g.first}, at::TensorOptions().dtype(o.dtype).device(o.device));
    if (distributed()) g.out = at::empty({g.in.numel() * o.world_size}, g.in.options());
    c10::Event queued(o.device.type());
    queued.record(compute);
    queued.block(*upload_stream);
    on_side.emplace(*upload_stream);
    g.in.copy_(part.narrow(0, g.first - base, g.next - g.first), /*non_blocking=*/true);
  } else {
    g.in = at::cat(pieces).to(o.device, /*non_blocking=*/true);
  }
  if (distributed()) {
    // Issued on the side stream when uploading: the collective waits for the upload.
    if (!g.out.defined()) g.out = at::empty({g.in.numel() * o.world_size}, g.in.options());
    DS_ASSIGN_OR_RETURN(g.handle, comm()->AllGatherAsync(
                                      g.out, g.in, "parameters of unit " + std::to_string(g.unit)));
  } else {
    g.out = g.in;
  }
  if (on_side) {
    g.uploaded.emplace(o.device.type());
    g.uploaded->record(*upload_stream);
  }
  return Status::OK();
}

Status ZeroOptimizer::Impl::EnsureGathered(int unit) {
  DS_RETURN_IF_ERROR(IssueGather(unit));
  std::unique_ptr<PendingGather> g = std::move(gathers[unit]);
  if (!g) return Status::OK();
  DS_RETURN_IF_ERROR(AdvanceRead(*g, /*wait=*/true));
  DS_RETURN_IF_ERROR(g->handle.Wait());
  if (g->uploaded) {
    c10::impl::VirtualGuardImpl device(o.device.type());
    g->uploaded->block(device.getStream(o.device));
  }
  torch::NoGradGuard no_grad;
  const int64_t U = g->in.numel();
  at::Tensor rows = g->out.view({o.world_size, U});
  int64_t column = 0;
  for (int i : g->tensors) {
    ZeroTensor& t = tensors[i];
    at::Tensor whole = rows.narrow(1, column, t.piece).reshape({-1}).narrow(0, 0, t.numel);
    t.param.set_data(whole.view(t.shape));
    t.fresh = true;
    live_elements += t.numel;
    column += t.piece;
  }
  return Status::OK();
}

void ZeroOptimizer::Impl::Prefetch(int unit, int direction) {
  if (o.prefetch_elements <= 0) return;
  // What is gathered or on its way already counts against stage3_max_live_parameters. On one
  // rank, reads from NVMe that are in go on to their upload now; on several, their all-gathers
  // wait for EnsureGathered, where every rank issues them in the same order (a read's finishing
  // time differs from rank to rank, and collectives are matched by their order).
  int64_t in_flight = 0;
  for (const auto& g : gathers) {
    if (!g) continue;
    if (!distributed()) {
      Status s = AdvanceRead(*g, /*wait=*/false);
      if (!s.ok()) Throw(s);
    }
    in_flight += g->elements * o.world_size;
  }
  // Units ahead, in the order they will run, while their stale elements fit
  // stage3_prefetch_bucket_size (the next unit always, as DeepSpeed fetches at least it).
  int64_t budget = o.prefetch_elements;
  for (int u = unit; u >= 0 && u < static_cast<int>(units.size()); u += direction) {
    if (gathers[u]) {
      budget -= gathers[u]->elements * o.world_size;
      continue;
    }
    int64_t wanted = 0;
    for (int i : units[u]) wanted += tensors[i].fresh ? 0 : tensors[i].numel;
    if (wanted == 0) continue;
    if ((u != unit && wanted > budget) ||
        live_elements + in_flight + wanted > o.max_live_elements) {
      return;
    }
    Status s = IssueGather(u);
    if (!s.ok()) Throw(s);
    budget -= wanted;
    in_flight += wanted;
  }
}

void ZeroOptimizer::Impl::Release(int unit) {
  at::Tensor empty = at::empty({0}, at::TensorOptions().dtype(o.dtype).device(o.device));
  for (int i : units[unit]) {
    ZeroTensor& t = tensors[i];
    if (t.persistent || !t.fresh) continue;
    t.param.set_data(empty);
    t.fresh = false;
    live_elements -= t.numel;
  }
}

at::Tensor ZeroOptimizer::Impl::Run(int model_unit, const at::Tensor& x,
                                    std::function<at::Tensor(const at::Tensor&)> fn) {
  const int u = model_unit + 1;
  TORCH_CHECK(u >= 1 && u < static_cast<int>(units.size()), "unit ", model_unit,
              " is not one of the model's ", units.size() - 1, " units");
  unit_fns[u] = std::move(fn);
  if (!torch::GradMode::is_enabled()) {  // evaluation: no backward pass will come
    Status s = EnsureGathered(u);
    if (!s.ok()) Throw(s);
    Prefetch(u + 1, +1);
    at::Tensor y = unit_fns[u](x);
    Release(u);
    return y;
  }
  // The unit's gradients are wanted even when its input needs none.
  at::Tensor in = x.requires_grad() ? x : x.detach().requires_grad_(true);
  return UnitFunction::apply(in, reinterpret_cast<int64_t>(this), static_cast<int64_t>(u));
}

// ---- gradients and the update

Status ZeroOptimizer::Impl::ReduceUnitGrads(int unit) {
  const int64_t W = o.world_size;
  int64_t U = 0;
  for (int i : units[unit]) U += tensors[i].piece;
  if (U == 0) return Status::OK();
  torch::NoGradGuard no_grad;
  at::Tensor send = at::zeros({W, U}, at::TensorOptions().dtype(o.comm_dtype).device(o.device));
  std::vector<std::pair<int64_t, int64_t>> places;  // per tensor: (column, partition offset)
  int64_t column = 0;
  for (int i : units[unit]) {
    ZeroTensor& t = tensors[i];
    at::Tensor& g = t.param.mutable_grad();
    if (g.defined()) {
      // Element k of the gradient goes to row k / piece, column k % piece of this tensor's
      // columns; the padding past numel stays zero (send starts zeroed).
      at::Tensor flat = g.reshape({-1});
      at::Tensor cols = send.narrow(1, column, t.piece);
      const int64_t full_rows = t.numel / t.piece, rest = t.numel % t.piece;
      if (full_rows > 0) {
        cols.narrow(0, 0, full_rows)
            .copy_(flat.narrow(0, 0, full_rows * t.piece).view({full_rows, t.piece}));
      }
      if (rest > 0)
        cols[full_rows].narrow(0, 0, rest).copy_(flat.narrow(0, full_rows * t.piece, rest));
      g.reset();
    }
    places.emplace_back(column, t.part_offset);
    column += t.piece;
  }
  PendingReduction r;
  r.buffer = send.view({W * U});
  PreScale(r.buffer);
  r.out = distributed() ? at::empty({U}, send.options()) : r.buffer;
  if (distributed()) {
    DS_ASSIGN_OR_RETURN(
        r.handle,
        comm()->ReduceScatterAsync(r.out, r.buffer, "gradients of unit " + std::to_string(unit)));
  }
  std::vector<int64_t> pieces;
  for (int i : units[unit]) pieces.push_back(tensors[i].piece);
  if (grad_sink) {
    unit_reduced[static_cast<size_t>(unit)] = true;
    // Offloaded: one transfer per run of tensors adjacent in the partition (a unit's tensors
    // are), straight into `grad`.
    struct Run {
      int64_t column, offset, n;
    };
    std::vector<Run> runs;
    for (size_t k = 0; k < places.size(); ++k) {
      const auto [column, offset] = places[k];
      if (!runs.empty() && offset == runs.back().offset + runs.back().n) {
        runs.back().n += pieces[k];  // columns are adjacent too: they follow tensor order
      } else {
        runs.push_back({column, offset, pieces[k]});
      }
    }
    r.apply = [this, runs](const at::Tensor& sum) {
      for (const Run& run : runs) SendGrad(sum.narrow(0, run.column, run.n), run.offset);
    };
    return LaunchReduction(std::move(r));
  }
  r.apply = [this, places, pieces](const at::Tensor& sum) {
    at::Tensor f32 = sum.to(grad.options());
    for (size_t k = 0; k < places.size(); ++k) {
      grad.narrow(0, places[k].second, pieces[k]).add_(f32.narrow(0, places[k].first, pieces[k]));
    }
  };
  return LaunchReduction(std::move(r));
}

Result<at::Tensor> ZeroOptimizer::Impl::GatherStage3Master() {
  const int64_t W = o.world_size;
  DS_ASSIGN_OR_RETURN(const at::Tensor master_now, MasterNow());
  at::Tensor mine = master_now.to(o.device);
  at::Tensor all = mine;
  if (distributed()) {
    all = at::empty({part_len * W}, mine.options());
    DS_RETURN_IF_ERROR(comm()->AllGather(all, mine, "master weights"));
  }
  at::Tensor rows = all.view({W, part_len});
  std::vector<at::Tensor> whole;
  for (const ZeroTensor& t : tensors) {
    whole.push_back(rows.narrow(1, t.part_offset, t.piece).reshape({-1}).narrow(0, 0, t.numel));
  }
  return at::cat(whole).to(at::kCPU);
}

}  // namespace ds::engine
