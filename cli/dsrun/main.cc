// dsrun: train with ZeRO from a DeepSpeed JSON config (cli/dsrun/dsrun.h). The program lends
// DsrunMain the disk measurement of bench/ (doctor, bench).
#include "bench/io_bench.h"
#include "cli/dsrun/dsrun.h"

namespace {

ds::Result<ds::engine::DiskSpeed> MeasureDisk(ds::io::Env* env, const std::string& dir,
                                              uint64_t bytes, bool with_fio) {
  ds::bench::IoBenchOptions o;
  o.dir = dir;
  o.size_bytes = bytes;
  o.repeat = 1;
  o.run_fio = with_fio;
  DS_ASSIGN_OR_RETURN(ds::bench::IoBenchReport r, ds::bench::RunIoBench(env, o));
  if (r.backends.empty()) return ds::Status::Unavailable("no I/O backend could be measured");
  const ds::bench::IoBackendResult& b = r.backends[0];
  return ds::engine::DiskSpeed{b.backend, b.direct, b.write_bps, b.read_bps,
                               r.fio.ran ? r.fio.write_bps : 0.0};
}

}  // namespace

int main(int argc, char** argv) {
  return ds::engine::DsrunMain(argc, argv, {.measure_disk = MeasureDisk});
}
