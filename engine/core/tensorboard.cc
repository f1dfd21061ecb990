#include "engine/core/tensorboard.h"

#include <unistd.h>

#include <array>
#include <cstring>

namespace ds::engine {
namespace {

// ---- CRC-32C (reflected polynomial 0x82F63B78), a byte table built once.

std::array<uint32_t, 256> MakeTable() {
  std::array<uint32_t, 256> t{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t c = i;
    for (int k = 0; k < 8; ++k) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    t[i] = c;
  }
  return t;
}

// ---- protobuf wire format, the few pieces an Event needs.

void Varint(std::string* out, uint64_t v) {
  while (v >= 0x80) {
    out->push_back(static_cast<char>(v | 0x80));
    v >>= 7;
  }
  out->push_back(static_cast<char>(v));
}
void Tag(std::string* out, int field, int wire) { Varint(out, (static_cast<uint64_t>(field) << 3) | wire); }
void Bytes(std::string* out, int field, std::string_view b) {
  Tag(out, field, 2);
  Varint(out, b.size());
  out->append(b);
}
void Fixed64(std::string* out, int field, uint64_t v) {
  Tag(out, field, 1);
  for (int i = 0; i < 8; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
void Fixed32(std::string* out, int field, uint32_t v) {
  Tag(out, field, 5);
  for (int i = 0; i < 4; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}

// Event { double wall_time = 1; int64 step = 2; string file_version = 3; Summary summary = 5;
//         SessionLog session_log = 7; }
// Summary { repeated Value value = 1; }  Value { string tag = 1; float simple_value = 2; }
// SessionLog { SessionStatus status = 1; }  (START = 1)
std::string EventProto(double wall_time, int64_t step, const std::string* file_version,
                       const std::string* tag, float value, bool session_start = false) {
  std::string e;
  uint64_t wt;
  std::memcpy(&wt, &wall_time, 8);
  Fixed64(&e, 1, wt);
  Tag(&e, 2, 0);
  Varint(&e, static_cast<uint64_t>(step));
  if (file_version != nullptr) Bytes(&e, 3, *file_version);
  if (tag != nullptr) {
    std::string v;
    Bytes(&v, 1, *tag);
    uint32_t f;
    std::memcpy(&f, &value, 4);
    Fixed32(&v, 2, f);
    std::string summary;
    Bytes(&summary, 1, v);
    Bytes(&e, 5, summary);
  }
  if (session_start) Bytes(&e, 7, std::string("\x08\x01", 2));
  return e;
}

void Le(std::string* out, uint64_t v, int n) {
  for (int i = 0; i < n; ++i) out->push_back(static_cast<char>(v >> (8 * i)));
}
uint64_t GetLe(const char* p, int n) {
  uint64_t v = 0;
  for (int i = 0; i < n; ++i) v |= static_cast<uint64_t>(static_cast<uint8_t>(p[i])) << (8 * i);
  return v;
}

// ---- a minimal protobuf reader for the fields above.

struct Reader {
  const char* p;
  const char* end;
  bool ok = true;
  uint64_t Varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64 && p < end; shift += 7) {
      const uint8_t b = static_cast<uint8_t>(*p++);
      v |= static_cast<uint64_t>(b & 0x7f) << shift;
      if ((b & 0x80) == 0) return v;
    }
    ok = false;
    return 0;
  }
  std::string_view Take(uint64_t n) {
    if (static_cast<uint64_t>(end - p) < n) {
      ok = false;
      return {};
    }
    std::string_view s(p, n);
    p += n;
    return s;
  }
  void Skip(int wire) {
    if (wire == 0) Varint();
    else if (wire == 1) Take(8);
    else if (wire == 5) Take(4);
    else if (wire == 2) Take(Varint());
    else ok = false;
  }
};

}  // namespace

uint32_t Crc32c(std::string_view data) {
  static const std::array<uint32_t, 256> table = MakeTable();
  uint32_t c = 0xffffffffu;
  for (unsigned char b : data) c = table[(c ^ b) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

uint32_t MaskedCrc32c(std::string_view data) {
  const uint32_t c = Crc32c(data);
  return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

TensorBoardWriter::TensorBoardWriter(io::Env* env, std::string path,
                                     std::unique_ptr<io::File> file)
    : env_(env), path_(std::move(path)), file_(std::move(file)) {}

TensorBoardWriter::~TensorBoardWriter() {
  (void)Flush();
  (void)file_->Close();
}

Result<std::unique_ptr<TensorBoardWriter>> TensorBoardWriter::Open(io::Env* env,
                                                                   const std::string& dir) {
  DS_RETURN_IF_ERROR(env->CreateDirs(dir)) << "creating the TensorBoard directory " << dir;
  const std::string name = "events.out.tfevents." +
                           std::to_string(env->WallTimeMicros() / 1000000) + "." + env->HostName() +
                           "." + std::to_string(::getpid()) + ".dstrain";
  const std::string path = io::JoinPath(dir, name);
  DS_ASSIGN_OR_RETURN(std::unique_ptr<io::File> f, env->OpenFile(path, {io::OpenMode::kTruncate}));
  std::unique_ptr<TensorBoardWriter> w(new TensorBoardWriter(env, path, std::move(f)));
  const std::string version = "brain.Event:2";
  DS_RETURN_IF_ERROR(w->WriteRecord(
      EventProto(static_cast<double>(env->WallTimeMicros()) / 1e6, 0, &version, nullptr, 0)));
  DS_RETURN_IF_ERROR(w->Flush());
  return w;
}

Status TensorBoardWriter::WriteRecord(const std::string& event) {
  std::string len;
  Le(&len, event.size(), 8);
  pending_ += len;
  Le(&pending_, MaskedCrc32c(len), 4);
  pending_ += event;
  Le(&pending_, MaskedCrc32c(event), 4);
  return pending_.size() > (64 << 10) ? Flush() : Status::OK();
}

Status TensorBoardWriter::AddScalar(const std::string& tag, double value, int64_t step) {
  return WriteRecord(EventProto(static_cast<double>(env_->WallTimeMicros()) / 1e6, step, nullptr,
                                &tag, static_cast<float>(value)));
}

Status TensorBoardWriter::AddSessionStart(int64_t step) {
  return WriteRecord(EventProto(static_cast<double>(env_->WallTimeMicros()) / 1e6, step, nullptr,
                                nullptr, 0, /*session_start=*/true));
}

Status TensorBoardWriter::Flush() {
  if (pending_.empty()) return Status::OK();
  DS_RETURN_IF_ERROR(file_->WriteAt(offset_, std::as_bytes(std::span(pending_.data(), pending_.size()))))
      << "writing the TensorBoard log " << path_;
  offset_ += pending_.size();
  pending_.clear();
  return Status::OK();
}

Result<std::vector<ScalarEvent>> ReadTensorBoardScalars(io::Env* env, const std::string& path) {
  DS_ASSIGN_OR_RETURN(std::string data, env->ReadFileToString(path));
  std::vector<ScalarEvent> out;
  size_t pos = 0;
  while (pos < data.size()) {
    auto bad = [&](const std::string& what) {
      return Status::Corruption(path + ": record at byte " + std::to_string(pos) + " " + what);
    };
    if (data.size() - pos < 12) return bad("is truncated");
    const std::string_view len_bytes(data.data() + pos, 8);
    const uint64_t len = GetLe(data.data() + pos, 8);
    if (GetLe(data.data() + pos + 8, 4) != MaskedCrc32c(len_bytes)) return bad("length CRC mismatch");
    if (data.size() - pos - 12 < len + 4) return bad("is truncated");
    const std::string_view event(data.data() + pos + 12, len);
    if (GetLe(data.data() + pos + 12 + len, 4) != MaskedCrc32c(event)) return bad("data CRC mismatch");
    pos += 16 + len;
    Reader r{event.data(), event.data() + event.size()};
    int64_t step = 0;
    while (r.ok && r.p < r.end) {
      const uint64_t key = r.Varint();
      const int field = static_cast<int>(key >> 3), wire = static_cast<int>(key & 7);
      if (field == 2 && wire == 0) {
        step = static_cast<int64_t>(r.Varint());
      } else if (field == 5 && wire == 2) {
        std::string_view summary = r.Take(r.Varint());
        Reader s{summary.data(), summary.data() + summary.size()};
        while (s.ok && s.p < s.end) {
          const uint64_t k = s.Varint();
          if ((k >> 3) != 1 || (k & 7) != 2) {
            s.Skip(static_cast<int>(k & 7));
            continue;
          }
          std::string_view value = s.Take(s.Varint());
          Reader v{value.data(), value.data() + value.size()};
          ScalarEvent ev{"", step, 0};
          while (v.ok && v.p < v.end) {
            const uint64_t vk = v.Varint();
            if ((vk >> 3) == 1 && (vk & 7) == 2) {
              ev.tag = std::string(v.Take(v.Varint()));
            } else if ((vk >> 3) == 2 && (vk & 7) == 5) {
              std::string_view f = v.Take(4);
              float x = 0;
              if (f.size() == 4) std::memcpy(&x, f.data(), 4);
              ev.value = x;
            } else {
              v.Skip(static_cast<int>(vk & 7));
            }
          }
          if (!v.ok) return bad("has a malformed summary value");
          out.push_back(ev);
        }
        if (!s.ok) return bad("has a malformed summary");
      } else {
        r.Skip(wire);
      }
    }
    if (!r.ok) return bad("is not a valid Event");
  }
  return out;
}

}  // namespace ds::engine
