// A job that only saves: step after step, each with tensors that depend on the step, into the
// save directory given, from `world` in-process ranks. The kill test kills it with SIGKILL at
// random instants and checks what it left; the cron test runs prune and gc beside it.
//   save_loop <save_dir> <first_step> <world> [--seconds S] [--interval-ms MS] [--keep-last N]
//             [--best]
// By default it saves back to back, forever, keeping the last 3. --seconds stops it (exit 0)
// after that long; --interval-ms spaces the starts of saves; --keep-last 0 turns its own
// retention off; --best records eval_loss in every save and has `best` follow it.
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <thread>

#include "ckpt/save_util.h"

namespace {

struct LoopFlags {
  double seconds = 0;  // 0: forever
  int64_t interval_ms = 0;
  uint32_t keep_last = 3;
  bool best = false;
};

bool ParseFlags(int argc, char** argv, LoopFlags* f) {
  for (int i = 4; i < argc; ++i) {
    const bool has_value = i + 1 < argc;
    if (std::strcmp(argv[i], "--seconds") == 0 && has_value) {
      f->seconds = std::atof(argv[++i]);
    } else if (std::strcmp(argv[i], "--interval-ms") == 0 && has_value) {
      f->interval_ms = std::atoll(argv[++i]);
    } else if (std::strcmp(argv[i], "--keep-last") == 0 && has_value) {
      f->keep_last = static_cast<uint32_t>(std::atoi(argv[++i]));
    } else if (std::strcmp(argv[i], "--best") == 0) {
      f->best = true;
    } else {
      return false;
    }
  }
  return true;
}

// A metric that goes up and down with the step, so `best` stays behind `latest` at times.
std::string Metrics(int64_t step) {
  return "{\"eval_loss\": " + std::to_string(1.0 + static_cast<double>((step * 37) % 101) / 100) +
         "}";
}

}  // namespace

int main(int argc, char** argv) {
  using namespace ds;
  using namespace ds::ckpt;
  LoopFlags flags;
  if (argc < 4 || !ParseFlags(argc, argv, &flags)) {
    std::fprintf(stderr,
                 "usage: save_loop <save_dir> <first_step> <world> [--seconds S] "
                 "[--interval-ms MS] [--keep-last N] [--best]\n");
    return 2;
  }
  const std::string dir = argv[1];
  const int64_t first = std::atoll(argv[2]);
  const auto world = static_cast<uint32_t>(std::atoi(argv[3]));
  InProcessStore store;
  WriterOptions o = TestWriterOptions(dir);
  o.io_backend = "";  // whatever this machine offers: io_uring where it can
  o.retention.keep_last = flags.keep_last;
  if (flags.best) o.best_metric = "eval_loss";
  o.run_id = std::to_string(first);
  using Clock = std::chrono::steady_clock;
  const Clock::time_point start = Clock::now();
  for (int64_t step = first;; ++step) {
    const Clock::time_point began = Clock::now();
    if (flags.seconds > 0 && began - start >= std::chrono::duration<double>(flags.seconds)) break;
    SaveOutcome out = SaveAll(io::Env::Default(), LoopState(step), {world, 1, 1}, step, o, &store,
                              flags.best ? Metrics(step) : "{}");
    for (uint32_t r = 0; r < world; ++r) {
      if (!out.status[r].ok()) {
        std::fprintf(stderr, "save of step %lld failed on rank %u: %s\n",
                     static_cast<long long>(step), r, out.status[r].ToString().c_str());
        return 1;
      }
    }
    std::printf("committed %lld\n", static_cast<long long>(step));
    std::fflush(stdout);
    std::this_thread::sleep_until(began + std::chrono::milliseconds(flags.interval_ms));
  }
  return 0;
}
