// Internal to engine/config: one reader per section of the config. Each reads its keys from the
// top-level reader `top`, fills a typed struct, and records errors and notes in top.diag().
// Order matters where values are derived from other sections: ParseConfig (config.cc) calls
// ReadOtherDeepSpeedKeys first (it refuses the keys DeepSpeed removed), then model, trainer,
// data, checkpoint, comms, batch, precision, optimizer, scheduler (needs optimizer and trainer),
// zero (needs model), monitor.
#pragma once

#include "engine/config/config.h"
#include "engine/config/section_reader.h"

namespace ds::engine::internal {

// dstrain's own sections (dstrain_sections.cc)
void ReadModel(SectionReader& top, ModelConfig* out);
// The largest value model.<key> may take (n_layer, n_head, d_model, seq_len, vocab).
int64_t ModelSizeLimit(std::string_view key);
// `scheduler_total_steps`: scheduler.params.total_num_steps when it is a number, which gives
// trainer.max_steps when that is not set.
void ReadTrainer(SectionReader& top, std::optional<int64_t> scheduler_total_steps,
                 TrainerConfig* out);
void ReadData(SectionReader& top, DataConfig* out);
void ReadCheckpoint(SectionReader& top, CheckpointConfig* out);
void ReadComms(SectionReader& top, CommsConfig* out);  // with DeepSpeed's top-level comm keys

// DeepSpeed's sections (deepspeed_sections.cc, zero_section.cc)
void ReadBatch(SectionReader& top, int64_t world_size, BatchConfig* out);
void ReadPrecision(SectionReader& top, Fp16Config* fp16, Bf16Config* bf16);
void ReadOptimizer(SectionReader& top, OptimizerConfig* out);
void ReadScheduler(SectionReader& top, const OptimizerConfig& optimizer,
                   const TrainerConfig& trainer, SchedulerConfig* out);
void ReadZero(SectionReader& top, const ModelConfig& model, ZeroConfig* out);
void ReadMonitor(SectionReader& top, MonitorConfig* out);
// DeepSpeed keys dstrain accepts without acting on them (activation_checkpointing,
// flops_profiler, comms_logger, pipeline, tensor_parallel, ...), and the ones DeepSpeed itself
// now refuses. The tensor-parallel and pipeline degrees go to `parallel` (dp is left to the
// caller).
void ReadOtherDeepSpeedKeys(SectionReader& top, ParallelConfig* parallel, ZeroConfig* zero);

}  // namespace ds::engine::internal
