#include "ckpt/rank_record.h"

#include <map>
#include <nlohmann/json.hpp>

namespace ds::ckpt {

using nlohmann::json;

std::string EncodeRankRecord(const RankRecord& r) {
  json j;
  j["rank"] = r.rank;
  j["ok"] = r.ok;
  j["error"] = r.error;
  j["code"] = static_cast<int>(r.code);
  j["file"] = {r.file.name, r.file.size};
  j["tensors"] = json::array();
  for (const auto& t : r.tensors) {
    j["tensors"].push_back({t.name, std::string(fmt::DTypeName(t.dtype)), t.shape});
  }
  j["slices"] = json::array();
  for (const auto& s : r.slices) {
    j["slices"].push_back({s.tensor, s.box_offset, s.box_length, s.flat_begin, s.flat_end,
                           s.first_chunk, s.offset_in_chunk});
  }
  j["chunks"] = json::array();
  for (const auto& c : r.chunks) {
    j["chunks"].push_back({c.offset, c.stored_len, c.raw_len, static_cast<int>(c.codec),
                           c.elem_size, c.raw_xxh64, c.stored_xxh64});
  }
  j["blobs"] = json::array();
  for (const auto& b : r.blobs) {
    j["blobs"].push_back({b.name, json::binary(std::vector<uint8_t>(b.data.begin(), b.data.end()))});
  }
  std::vector<uint8_t> cbor = json::to_cbor(j);
  return std::string(cbor.begin(), cbor.end());
}

Result<RankRecord> DecodeRankRecord(const std::string& bytes, uint32_t expected_rank) {
  const std::string what = "the save record of rank " + std::to_string(expected_rank);
  json j = json::from_cbor(bytes, true, false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::Corruption(what + " is not readable (a store shared with another job?)");
  }
  RankRecord r;
  try {
    r.rank = j.at("rank").get<uint32_t>();
    r.ok = j.at("ok").get<bool>();
    r.error = j.at("error").get<std::string>();
    r.code = static_cast<StatusCode>(j.value("code", static_cast<int>(StatusCode::kIOError)));
    r.file.name = j.at("file").at(0).get<std::string>();
    r.file.size = j.at("file").at(1).get<uint64_t>();
    r.file.rank = r.rank;
    for (const auto& t : j.at("tensors")) {
      auto dtype = fmt::DTypeFromName(t.at(1).get<std::string>());
      if (!dtype) return Status::Corruption(what + " has an unknown dtype");
      r.tensors.push_back({t.at(0).get<std::string>(), *dtype, t.at(2).get<std::vector<int64_t>>()});
    }
    for (const auto& s : j.at("slices")) {
      r.slices.push_back({s.at(0).get<uint32_t>(), r.rank, s.at(1).get<std::vector<int64_t>>(),
                          s.at(2).get<std::vector<int64_t>>(), s.at(3).get<uint64_t>(),
                          s.at(4).get<uint64_t>(), s.at(5).get<uint64_t>(),
                          s.at(6).get<uint64_t>()});
    }
    for (const auto& c : j.at("chunks")) {
      r.chunks.push_back({0, c.at(0).get<uint64_t>(), c.at(1).get<uint64_t>(),
                          c.at(2).get<uint64_t>(), static_cast<fmt::Codec>(c.at(3).get<int>()),
                          c.at(4).get<uint8_t>(), c.at(5).get<uint64_t>(),
                          c.at(6).get<uint64_t>()});
    }
    for (const auto& b : j.at("blobs")) {
      const auto& bin = b.at(1).get_binary();
      r.blobs.push_back({b.at(0).get<std::string>(), std::string(bin.begin(), bin.end())});
    }
  } catch (const json::exception& e) {
    return Status::Corruption(what + " is malformed: " + e.what());
  }
  if (r.rank != expected_rank) {
    return Status::Corruption(what + " says it comes from rank " + std::to_string(r.rank));
  }
  return r;
}

Status MergeRankRecords(const std::vector<RankRecord>& records, fmt::Manifest* m) {
  std::map<std::string, std::pair<uint32_t, uint32_t>> tensor_index;  // name -> (index, rank)
  for (const RankRecord& r : records) {
    const uint32_t file_index = static_cast<uint32_t>(m->files.size());
    const uint64_t chunk_base = m->chunks.size();
    m->files.push_back(r.file);
    for (fmt::ChunkMeta c : r.chunks) {
      c.file = file_index;
      m->chunks.push_back(c);
    }
    std::vector<uint32_t> local_to_global(r.tensors.size());
    for (size_t i = 0; i < r.tensors.size(); ++i) {
      const fmt::TensorMeta& t = r.tensors[i];
      auto it = tensor_index.find(t.name);
      if (it == tensor_index.end()) {
        const auto index = static_cast<uint32_t>(m->tensors.size());
        tensor_index[t.name] = {index, r.rank};
        m->tensors.push_back(t);
        local_to_global[i] = index;
        continue;
      }
      const fmt::TensorMeta& first = m->tensors[it->second.first];
      if (first.dtype != t.dtype || first.shape != t.shape) {
        auto describe = [](const fmt::TensorMeta& x) {
          std::string s(fmt::DTypeName(x.dtype));
          s += " [";
          for (size_t d = 0; d < x.shape.size(); ++d) s += (d ? ", " : "") + std::to_string(x.shape[d]);
          return s + "]";
        };
        return Status::InvalidArgument("tensor '" + t.name + "' is " + describe(first) +
                                       " on rank " + std::to_string(it->second.second) +
                                       " but " + describe(t) + " on rank " +
                                       std::to_string(r.rank));
      }
      local_to_global[i] = it->second.first;
    }
    for (fmt::SliceMeta s : r.slices) {
      s.tensor = local_to_global[s.tensor];
      s.first_chunk += chunk_base;
      s.rank = r.rank;
      m->slices.push_back(s);
    }
    for (const fmt::BlobMeta& b : r.blobs) m->blobs.push_back(b);
  }
  return Status::OK();
}

}  // namespace ds::ckpt
