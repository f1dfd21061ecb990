# Regenerates the reference table in lr_schedule_test.cc from DeepSpeed 0.19.8's own
# lr_schedules.py: pip download --no-deps deepspeed==0.19.8 -d /tmp/dswheel, unpack it there,
# then run this with a Python that has torch. It prints JSON: [step, lr, beta1] per schedule.
# Reference values from DeepSpeed 0.19.8's own lr_schedules.py (loaded from its source tree).
import sys, types, importlib.util, json
import torch
sys.modules['deepspeed'] = types.ModuleType('deepspeed')
utils = types.ModuleType('deepspeed.utils')
import logging
utils.logger = logging.getLogger('x')
sys.modules['deepspeed.utils'] = utils
acc = types.ModuleType('deepspeed.accelerator'); acc.get_accelerator = lambda: types.SimpleNamespace(device_name='cpu', communication_backend_version=lambda: (0,0,0)); sys.modules['deepspeed.accelerator'] = acc
rt = types.ModuleType('deepspeed.runtime'); sys.modules['deepspeed.runtime'] = rt
spec = importlib.util.spec_from_file_location('deepspeed.runtime.constants', '/tmp/dswheel/deepspeed-0.19.8/deepspeed/runtime/constants.py')
c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c); sys.modules['deepspeed.runtime.constants'] = c
spec = importlib.util.spec_from_file_location('L', '/tmp/dswheel/deepspeed-0.19.8/deepspeed/runtime/lr_schedules.py')
L = importlib.util.module_from_spec(spec); spec.loader.exec_module(L)
def opt(lr=0.01):
    return torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=lr, betas=(0.9, 0.999))
steps = [0, 1, 2, 5, 9, 10, 11, 50, 99, 100, 150, 200, 250]
out = {}
def run(name, sched, o, mom=False):
    vals = []
    it = -1
    for s in range(max(steps) + 1):
        if s in steps:
            vals.append([s, o.param_groups[0]['lr'], o.param_groups[0]['betas'][0]])
        sched.step()
    out[name] = vals
o = opt(); run('WarmupLR_log', L.WarmupLR(o, warmup_min_lr=0.001, warmup_max_lr=0.01, warmup_num_steps=10), o)
o = opt(); run('WarmupLR_linear', L.WarmupLR(o, warmup_min_lr=0.0, warmup_max_lr=0.02, warmup_num_steps=10, warmup_type='linear'), o)
o = opt(); run('WarmupDecayLR', L.WarmupDecayLR(o, total_num_steps=200, warmup_min_lr=0.0, warmup_max_lr=0.01, warmup_num_steps=10), o)
o = opt(0.003); run('WarmupCosineLR', L.WarmupCosineLR(o, total_num_steps=200, warmup_min_ratio=0.1, warmup_num_steps=10, cos_min_ratio=0.01), o)
o = opt(); run('OneCycle', L.OneCycle(o, cycle_min_lr=0.001, cycle_max_lr=0.01, cycle_first_step_size=40, cycle_second_step_size=60, decay_step_size=10, decay_lr_rate=0.5, decay_mom_rate=0.1, cycle_first_stair_count=4), o)
o = opt(); run('LRRangeTest', L.LRRangeTest(o, lr_range_test_min_lr=0.001, lr_range_test_step_size=20, lr_range_test_step_rate=2.0), o)
o = opt(); run('LRRangeTest_stair', L.LRRangeTest(o, lr_range_test_min_lr=0.001, lr_range_test_step_size=20, lr_range_test_step_rate=2.0, lr_range_test_staircase=True), o)
print(json.dumps(out))
