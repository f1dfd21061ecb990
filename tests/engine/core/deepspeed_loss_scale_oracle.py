# Regenerates the reference sequences in loss_scaler_test.cc from DeepSpeed 0.19.8's own
# fp16/loss_scaler.py (unpacked in /tmp/dswheel; see deepspeed_lr_oracle.py). Prints JSON: per
# case, the scale after each update and the step at which DeepSpeed raised (or -1).
import sys, types, importlib.util, json, logging
import torch
for name in ['deepspeed', 'deepspeed.runtime', 'deepspeed.runtime.fp16']:
    sys.modules[name] = types.ModuleType(name)
utils = types.ModuleType('deepspeed.utils'); utils.logger = logging.getLogger('x')
utils.log_dist = lambda *a, **k: None
cu = types.ModuleType('deepspeed.runtime.config_utils'); cu.DeepSpeedConfigObject = object
sys.modules['deepspeed.runtime.config_utils'] = cu
ru = types.ModuleType('deepspeed.runtime.utils'); ru.has_inf_or_nan = lambda x: False
sys.modules['deepspeed.runtime.utils'] = ru
sys.modules['deepspeed.utils'] = utils
dist = types.ModuleType('deepspeed.comm'); dist.get_rank = lambda: 1
sys.modules['deepspeed.comm'] = dist; sys.modules['deepspeed'].comm = dist
acc = types.ModuleType('deepspeed.accelerator'); acc.get_accelerator = lambda: None
sys.modules['deepspeed.accelerator'] = acc
spec = importlib.util.spec_from_file_location('LS', '/tmp/dswheel/deepspeed-0.19.8/deepspeed/runtime/fp16/loss_scaler.py')
LS = importlib.util.module_from_spec(spec); spec.loader.exec_module(LS)
cases = {
  'grow': dict(power=4, window=3, hyst=2, cons=False, minimum=1, flags='0000000000'),
  'hysteresis': dict(power=4, window=3, hyst=2, cons=False, minimum=1, flags='1011001000'),
  'no_hysteresis': dict(power=4, window=2, hyst=1, cons=False, minimum=1, flags='1100011'),
  'consecutive': dict(power=4, window=3, hyst=3, cons=True, minimum=1, flags='1010100010'),
  'floor': dict(power=2, window=5, hyst=1, cons=False, minimum=1, flags='111'),
}
out = {}
for name, c in cases.items():
    s = LS.DynamicLossScaler(init_scale=2 ** c['power'], scale_window=c['window'], min_scale=c['minimum'],
                             delayed_shift=c['hyst'], consecutive_hysteresis=c['cons'])
    scales, raised = [], -1
    for i, f in enumerate(c['flags']):
        try:
            s.update_scale(f == '1')
        except Exception:
            raised = i
            break
        scales.append(s.cur_scale)
    out[name] = dict(case=c, scales=scales, raised=raised)
print(json.dumps(out))
