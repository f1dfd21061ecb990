# Prints the files DeepSpeed 0.19.8's own csvMonitor (deepspeed/monitor/csv_monitor.py) writes
# for the events of csv_monitor_test.cc's DeepSpeedWritesTheSameFiles scenario; the test's
# kDeepSpeedFiles were copied from this output. The events are the ones DeepSpeed's engine
# emits (runtime/engine.py: lr, loss_scale, elapsed_time_ms_*; runtime/pipe/engine.py:
# train_loss, eval_loss), at x = global_samples. A development aid, not run by CI:
#   pip download --no-deps deepspeed==0.19.8 -d /tmp/dswheel && tar xzf ... -C /tmp/dswheel
#   python3 tests/engine/monitor/deepspeed_csv_oracle.py
import importlib.util
import json
import os
import sys
import tempfile
import types

SRC = "/tmp/dswheel/deepspeed-0.19.8/deepspeed/monitor/csv_monitor.py"

# csv_monitor.py needs only deepspeed.comm.get_rank and the Monitor base class.
ds = types.ModuleType("deepspeed")
comm = types.ModuleType("deepspeed.comm")
comm.get_rank = lambda: 0
ds.comm = comm
mon_pkg = types.ModuleType("deepspeed.monitor")
mon_pkg.__path__ = []
mon_mod = types.ModuleType("deepspeed.monitor.monitor")


class Monitor:
    def __init__(self, config):
        self.monitor_config = config


mon_mod.Monitor = Monitor
sys.modules.update({"deepspeed": ds, "deepspeed.comm": comm, "deepspeed.monitor": mon_pkg,
                    "deepspeed.monitor.monitor": mon_mod})
spec = importlib.util.spec_from_file_location("deepspeed.monitor.csv_monitor", SRC)
csv_monitor = importlib.util.module_from_spec(spec)
spec.loader.exec_module(csv_monitor)

# (samples, loss, lr, loss_scale, forward_s, backward_s, optimizer_s): csv_monitor_test.cc's kSteps.
STEPS = [
    (8, 2.5, 3e-4, 65536.0, 0.012, 0.025, 0.003),
    (16, 2.25, 1e-05, 32768.0, 0.0125, 0.0251, 0.0031),
    (24, 1.0 / 3.0, 0.1, 32768.0, 1.5, 2.0, 1e-6),
]
EVAL = (24, 2.0625)

out = tempfile.mkdtemp()
config = types.SimpleNamespace(enabled=True, output_path=out, job_name="ds_job")
m = csv_monitor.csvMonitor(config)
for samples, loss, lr, scale, fwd, bwd, opt in STEPS:
    m.write_events([("Train/Samples/train_loss", loss, samples)])
    m.write_events([("Train/Samples/lr", lr, samples), ("Train/Samples/loss_scale", scale, samples)])
    m.write_events([("Train/Samples/elapsed_time_ms_forward", fwd * 1000, samples),
                    ("Train/Samples/elapsed_time_ms_backward", bwd * 1000, samples),
                    ("Train/Samples/elapsed_time_ms_step", opt * 1000, samples)])
m.write_events([("Train/Samples/eval_loss", EVAL[1], EVAL[0])])
files = {}
for name in sorted(os.listdir(os.path.join(out, "ds_job"))):
    with open(os.path.join(out, "ds_job", name), newline="") as f:
        files[name] = f.read()
print(json.dumps(files, indent=1))
