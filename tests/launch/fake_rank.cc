// A stand-in for a training rank, started by launcher_test. What it does depends on argv[1] and
// on its RANK (set by the launcher); ranks that are not the one acting print "rank N sleeping"
// and sleep until stopped:
//   env                   print the launcher's variables on one stdout line, a line on stderr
//   exit R CODE           rank R exits with CODE
//   kill-self R SIG       rank R kills itself with signal SIG
//   stubborn DIR          every rank but 0 ignores SIGTERM and creates DIR/ready-<rank>; rank 0
//                         waits for all those files, then exits 3
//   kill-launcher         rank 0 sends SIGTERM to its parent (the launcher)
//   output                lines on stdout and stderr, one written in two parts, one unterminated
// A test helper, so it calls POSIX directly rather than going through io::Env.
#include <fcntl.h>
#include <signal.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace {

constexpr int kSleepSeconds = 30;  // far longer than any test waits

// A decimal number; -1 when `text` is missing or not one.
int Int(const char* text) {
  if (text == nullptr) return -1;
  char* end = nullptr;
  const int64_t v = std::strtoll(text, &end, 10);
  return end != text && *end == '\0' ? static_cast<int>(v) : -1;
}

int Rank() { return Int(std::getenv("RANK")); }

int SleepUntilStopped() {
  std::printf("rank %d sleeping\n", Rank());
  std::fflush(stdout);
  sleep(kSleepSeconds);
  return 0;
}

int PrintEnv() {
  std::string line;
  for (const char* name : {"RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "GROUP_RANK",
                           "NODE_RANK", "MASTER_ADDR", "MASTER_PORT", "DSTRAIN_LAUNCHED",
                           "DSTRAIN_TEST_EXTRA", "DSTRAIN_TEST_INHERITED"}) {
    const char* v = std::getenv(name);
    line += std::string(line.empty() ? "" : " ") + name + "=" + (v != nullptr ? v : "<unset>");
  }
  std::printf("%s\n", line.c_str());
  std::fprintf(stderr, "rank %d on stderr\n", Rank());
  return 0;
}

int Stubborn(const std::string& dir) {
  const int rank = Rank();
  if (rank != 0) {
    signal(SIGTERM, SIG_IGN);
    const std::string path = dir + "/ready-" + std::to_string(rank);
    close(open(path.c_str(), O_CREAT | O_WRONLY | O_CLOEXEC, 0644));
    return SleepUntilStopped();
  }
  const int world = Int(std::getenv("WORLD_SIZE"));
  for (int waited_ms = 0; waited_ms < 5000; waited_ms += 10) {
    int ready = 0;
    for (int r = 1; r < world; ++r) {
      ready += access((dir + "/ready-" + std::to_string(r)).c_str(), F_OK) == 0 ? 1 : 0;
    }
    if (ready == world - 1) break;
    usleep(10 * 1000);
  }
  return 3;
}

int Output() {
  std::printf("first line\n");
  std::printf("partial ");
  std::fflush(stdout);
  usleep(50 * 1000);  // the launcher reads the first part on its own
  std::printf("completed\n");
  std::fflush(stdout);
  std::fprintf(stderr, "on stderr\n");
  std::printf("no newline at the end");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string mode = argc > 1 ? argv[1] : "";
  const int rank = Rank();
  if (mode == "env") return PrintEnv();
  if (mode == "exit" && argc == 4) {
    return rank == Int(argv[2]) ? Int(argv[3]) : SleepUntilStopped();
  }
  if (mode == "kill-self" && argc == 4) {
    if (rank == Int(argv[2])) kill(getpid(), Int(argv[3]));
    return SleepUntilStopped();
  }
  if (mode == "stubborn" && argc == 3) return Stubborn(argv[2]);
  if (mode == "kill-launcher") {
    if (rank == 0) kill(getppid(), SIGTERM);
    return SleepUntilStopped();
  }
  if (mode == "output") return Output();
  std::fprintf(stderr, "fake_rank: unknown arguments (see the top of fake_rank.cc)\n");
  return 2;
}
