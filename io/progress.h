// A progress bar on stderr for long commands: shown only when stderr is a terminal and only
// once the work has taken more than a second; redrawn at most ten times a second.
// Thread safety: Add may be called from any thread.
#pragma once

#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <mutex>
#include <string>

#include "io/env.h"
#include "io/units.h"

namespace ds::io {

class Progress {
 public:
  // `total` in the unit of Add (bytes when `bytes` is true).
  Progress(std::string label, uint64_t total, bool bytes = true)
      : label_(std::move(label)),
        total_(total),
        bytes_(bytes),
        enabled_(::isatty(2) == 1),
        start_(Env::Default()->NowMicros()) {}
  ~Progress() { Finish(); }
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void Add(uint64_t n) {
    const uint64_t done = done_.fetch_add(n) + n;
    if (!enabled_) return;
    const uint64_t now = Env::Default()->NowMicros();
    if (now - start_ < 1000000) return;
    std::unique_lock<std::mutex> lock(mu_, std::try_to_lock);
    if (!lock.owns_lock() || now - last_draw_ < 100000) return;
    last_draw_ = now;
    Draw(done, now);
  }

  // Clears the bar (if one was drawn).
  void Finish() {
    std::lock_guard<std::mutex> lock(mu_);
    if (last_draw_ != 0) std::fputs("\r\033[K", stderr);
    last_draw_ = 0;
  }

 private:
  void Draw(uint64_t done, uint64_t now) {
    const double frac = total_ == 0 ? 1.0 : std::min(1.0, static_cast<double>(done) / total_);
    const int width = 30, filled = static_cast<int>(frac * width);
    const double secs = static_cast<double>(now - start_) / 1e6;
    std::string bar(filled, '#');
    bar.resize(width, '.');
    std::string amount = bytes_ ? FormatBytes(done) + " / " + FormatBytes(total_) + ", " +
                                      FormatRate(secs > 0 ? done / secs : 0)
                                : std::to_string(done) + " / " + std::to_string(total_);
    std::fprintf(stderr, "\r\033[K%s [%s] %3.0f%%  %s", label_.c_str(), bar.c_str(),
                 100 * frac, amount.c_str());
    std::fflush(stderr);
  }

  std::string label_;
  uint64_t total_;
  bool bytes_;
  bool enabled_;
  uint64_t start_;
  std::atomic<uint64_t> done_{0};
  std::mutex mu_;
  uint64_t last_draw_ = 0;
};

}  // namespace ds::io
