// A job that only saves: step after step, each with tensors that depend on the step, into the
// save directory given, from `world` in-process ranks. The kill test kills it with SIGKILL at
// random instants and checks what it left.
//   save_loop <save_dir> <first_step> <world>
#include <cstdio>
#include <cstdlib>

#include "ckpt/save_util.h"

int main(int argc, char** argv) {
  using namespace ds;
  using namespace ds::ckpt;
  if (argc != 4) {
    std::fprintf(stderr, "usage: save_loop <save_dir> <first_step> <world>\n");
    return 2;
  }
  const std::string dir = argv[1];
  const int64_t first = std::atoll(argv[2]);
  const auto world = static_cast<uint32_t>(std::atoi(argv[3]));
  InProcessStore store;
  WriterOptions o = TestWriterOptions(dir);
  o.io_backend = "";  // whatever this machine offers: io_uring where it can
  o.retention.keep_last = 3;
  o.run_id = std::to_string(first);
  for (int64_t step = first;; ++step) {
    SaveOutcome out = SaveAll(io::Env::Default(), LoopState(step), {world, 1, 1}, step, o, &store);
    if (!out.status[0].ok()) {
      std::fprintf(stderr, "save of step %lld failed: %s\n", static_cast<long long>(step),
                   out.status[0].ToString().c_str());
      return 1;
    }
    std::printf("committed %lld\n", static_cast<long long>(step));
    std::fflush(stdout);
  }
}
