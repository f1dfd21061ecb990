# Prints what DeepSpeed 0.19.8's own DeepSpeedConfig resolves for the batch-size cases and the
# defaults that config_test.cc asserts (kDeepSpeedBatchCases and the Defaults* tests were
# written from this output). A development aid, not run by CI (CI does not install DeepSpeed):
#   pip download --no-deps deepspeed==0.19.8 -d /tmp/dswheel && tar xzf ... -C /tmp/dswheel
#   pip install --target /tmp/dsoracle pydantic hjson py-cpuinfo psutil packaging tqdm msgpack
#   PYTHONPATH=/tmp/dsoracle:/tmp/dswheel/deepspeed-0.19.8 .venv/bin/python \
#       tests/engine/config/deepspeed_config_oracle.py
import json
import logging

import deepspeed.runtime.config as dsc

logging.disable(logging.WARNING)

# (train_batch_size, train_micro_batch_size_per_gpu, gradient_accumulation_steps, world size);
# None: the key is absent.
CASES = [
    (32, 4, 2, 4), (32, 4, 2, 2), (32, 4, None, 2), (32, None, 2, 2), (None, 4, 2, 2),
    (32, None, None, 4), (None, 4, None, 4), (None, None, 2, 1), (None, None, None, 1),
    (30, 4, None, 2), (30, None, 2, 2), (30, None, None, 4), (4, 4, None, 2),
    (48, 3, None, 4), (7, None, None, 1),
]


def batch_case(tbs, micro, gas, world):
    cfg = {k: v for k, v in (("train_batch_size", tbs), ("train_micro_batch_size_per_gpu", micro),
                             ("gradient_accumulation_steps", gas)) if v is not None}
    dsc.dist.get_rank = lambda *a, **k: 0
    dsc.dist.get_world_size = lambda *a, **k: world
    try:
        c = dsc.DeepSpeedConfig(cfg)
        return [c.train_batch_size, c.train_micro_batch_size_per_gpu,
                c.gradient_accumulation_steps]
    except (AssertionError, ValueError) as e:
        return "error: " + str(e)


def defaults():
    dsc.dist.get_world_size = lambda *a, **k: 1
    c = dsc.DeepSpeedConfig({"train_batch_size": 1})
    z = c.zero_config
    zero = {k: v for k, v in z.model_dump(by_alias=True).items() if not isinstance(v, dict)}
    from deepspeed.runtime.zero.offload_config import (DeepSpeedZeroOffloadOptimizerConfig,
                                                       DeepSpeedZeroOffloadParamConfig)
    return {
        "gradient_clipping": c.gradient_clipping,
        "steps_per_print": c.steps_per_print,
        "wall_clock_breakdown": c.wall_clock_breakdown,
        "prescale_gradients": c.prescale_gradients,
        "gradient_predivide_factor": c.gradient_predivide_factor,
        "communication_data_type": str(c.communication_data_type),
        "fp16": c.float16_config.model_dump(),
        "bf16": c.bfloat16_config.model_dump(),
        "zero": zero,
        "zero_stage3_overlap_comm": dsc.get_zero_config(
            {"zero_optimization": {"stage": 3}}).overlap_comm,
        "offload_optimizer": DeepSpeedZeroOffloadOptimizerConfig().model_dump(),
        "offload_param": DeepSpeedZeroOffloadParamConfig().model_dump(),
        "monitor": c.monitor_config.model_dump(),
        "flops_profiler": vars(c.flops_profiler_config),
        "activation_checkpointing": vars(c.activation_checkpointing_config),
        "checkpoint_tag_validation": [c.checkpoint_tag_validation_enabled,
                                      c.checkpoint_tag_validation_fail],
        "load_universal": c.load_universal_checkpoint,
        "use_node_local_storage": c.use_node_local_storage,
        "pipeline": c.pipeline,
    }


print(json.dumps({"batch": [[list(case), batch_case(*case)] for case in CASES],
                  "defaults": defaults()}, indent=1, default=str))
