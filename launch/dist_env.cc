#include "launch/dist_env.h"

#include <cctype>
#include <charconv>
#include <cstdint>
#include <map>
#include <optional>

namespace ds::launch {
namespace {

constexpr int kDefaultMasterPort = 29500;  // torchrun's default
constexpr int kMaxPort = 65535;

// The value of `name`, or nullopt when it is unset or empty (an empty variable counts as unset).
std::optional<std::string_view> Get(const GetEnvFn& get_env, const char* name) {
  const char* v = get_env(name);
  if (v == nullptr || *v == '\0') return std::nullopt;
  return std::string_view(v);
}

// A plain decimal integer (no sign, no spaces) that fits in T; nullopt otherwise.
template <typename T>
std::optional<T> ParseDecimal(std::string_view text) {
  if (text.empty() || !std::isdigit(static_cast<unsigned char>(text[0]))) return std::nullopt;
  T value{};
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (ec != std::errc() || ptr != text.data() + text.size()) return std::nullopt;
  return value;
}

// An integer and where it came from, so messages can say "LOCAL_SIZE=3" rather than a number.
struct Named {
  std::string name;  // the variable that gave the value, or how it was derived
  int value = 0;
};

std::string Show(const Named& n) { return n.name + "=" + std::to_string(n.value); }

// Reads `name` as an integer >= `min` (0 or 1); nullopt when unset.
Result<std::optional<Named>> ReadInt(const GetEnvFn& get_env, const char* name, int min) {
  std::optional<std::string_view> text = Get(get_env, name);
  if (!text) return std::optional<Named>();
  std::optional<int> v = ParseDecimal<int>(*text);
  if (!v || *v < min) {
    return Status::InvalidArgument(std::string(name) + "=" + std::string(*text) + " is not a " +
                                   (min > 0 ? "positive" : "non-negative") + " integer");
  }
  return std::optional<Named>(Named{name, *v});
}

// Reads `name` as an integer >= `min`, or `fallback` when unset.
Result<Named> ReadIntOr(const GetEnvFn& get_env, const char* name, int min, const Named& fallback) {
  DS_ASSIGN_OR_RETURN(std::optional<Named> v, ReadInt(get_env, name, min));
  return v ? *v : fallback;
}

Status CheckBelow(const Named& index, const Named& limit) {
  if (index.value < limit.value) return Status::OK();
  return Status::InvalidArgument(Show(index) + " is not below " + Show(limit));
}

Result<int> ReadPort(const GetEnvFn& get_env) {
  std::optional<std::string_view> text = Get(get_env, "MASTER_PORT");
  if (!text) return kDefaultMasterPort;
  std::optional<int> v = ParseDecimal<int>(*text);
  if (!v || *v < 1 || *v > kMaxPort) {
    return Status::InvalidArgument("MASTER_PORT=" + std::string(*text) +
                                   " is not a TCP port (1 to 65535)");
  }
  return *v;
}

// ---- torchrun

Result<DistEnv> FromTorchrun(const GetEnvFn& get_env) {
  DS_ASSIGN_OR_RETURN(std::optional<Named> rank, ReadInt(get_env, "RANK", 0));
  DS_ASSIGN_OR_RETURN(std::optional<Named> world, ReadInt(get_env, "WORLD_SIZE", 1));
  if (!rank || !world) {
    const char* set = rank ? "RANK" : "WORLD_SIZE";
    const char* unset = rank ? "WORLD_SIZE" : "RANK";
    return Status::InvalidArgument(Show(rank ? *rank : *world) + " is set but " + unset +
                                   " is not: a launched rank needs both (torchrun and dsrun set " +
                                   "them); unset " + set + " to run a single process");
  }
  DS_RETURN_IF_ERROR(CheckBelow(*rank, *world));

  DS_ASSIGN_OR_RETURN(Named local_world, ReadIntOr(get_env, "LOCAL_SIZE", 1, *world));
  DS_ASSIGN_OR_RETURN(local_world, ReadIntOr(get_env, "LOCAL_WORLD_SIZE", 1, local_world));
  if (world->value % local_world.value != 0) {
    return Status::InvalidArgument(Show(*world) + " is not a multiple of " + Show(local_world) +
                                   " (every node runs the same number of ranks)");
  }
  const Named nnodes{"nnodes", world->value / local_world.value};

  DS_ASSIGN_OR_RETURN(Named local_rank, ReadIntOr(get_env, "LOCAL_RANK", 0,
                                                  {"LOCAL_RANK", rank->value % local_world.value}));
  DS_RETURN_IF_ERROR(CheckBelow(local_rank, local_world));

  DS_ASSIGN_OR_RETURN(Named node_rank, ReadIntOr(get_env, "NODE_RANK", 0,
                                                 {"NODE_RANK", rank->value / local_world.value}));
  DS_ASSIGN_OR_RETURN(node_rank, ReadIntOr(get_env, "GROUP_RANK", 0, node_rank));
  if (node_rank.value >= nnodes.value) {
    return Status::InvalidArgument(Show(node_rank) + " is not below the number of nodes " +
                                   std::to_string(nnodes.value) + " (" + Show(*world) + " / " +
                                   Show(local_world) + ")");
  }

  DistEnv d;
  d.rank = rank->value;
  d.world_size = world->value;
  d.local_rank = local_rank.value;
  d.local_world_size = local_world.value;
  d.node_rank = node_rank.value;
  d.nnodes = nnodes.value;
  if (std::optional<std::string_view> addr = Get(get_env, "MASTER_ADDR")) d.master_addr = *addr;
  DS_ASSIGN_OR_RETURN(d.master_port, ReadPort(get_env));
  d.source = "torchrun";
  return d;
}

// ---- SLURM

// The tasks on node `node` from SLURM_TASKS_PER_NODE's run-length list: "4(x2),3" is 4, 4, 3.
// The whole list is checked, so a damaged value never passes because this node came early.
Result<int> TasksOnNode(std::string_view spec, const Named& node) {
  const Status malformed =
      Status::InvalidArgument("SLURM_TASKS_PER_NODE=" + std::string(spec) +
                              " is not a list of task counts like \"4(x2),3\"");
  std::optional<int> mine;
  int64_t nodes = 0;  // nodes covered by the items read so far
  for (size_t pos = 0; pos <= spec.size();) {
    size_t end = spec.find(',', pos);
    if (end == std::string_view::npos) end = spec.size();
    std::string_view item = spec.substr(pos, end - pos);
    pos = end + 1;
    int64_t repeat = 1;
    if (size_t open = item.find('('); open != std::string_view::npos) {
      std::string_view suffix = item.substr(open);  // "(xM)"
      if (suffix.size() < 4 || !suffix.starts_with("(x") || !suffix.ends_with(")")) {
        return malformed;
      }
      std::optional<int64_t> r = ParseDecimal<int64_t>(suffix.substr(2, suffix.size() - 3));
      if (!r || *r < 1 || *r > (int64_t{1} << 32)) return malformed;
      repeat = *r;
      item = item.substr(0, open);
    }
    std::optional<int> tasks = ParseDecimal<int>(item);
    if (!tasks || *tasks < 1) return malformed;
    if (!mine && node.value < nodes + repeat) mine = *tasks;
    nodes += repeat;
  }
  if (mine) return *mine;
  return Status::InvalidArgument("SLURM_TASKS_PER_NODE=" + std::string(spec) + " lists " +
                                 std::to_string(nodes) + (nodes == 1 ? " node; " : " nodes; ") +
                                 Show(node) + " is not among them");
}

// Ranks on this node: SLURM_NTASKS_PER_NODE, else this node's entry of SLURM_TASKS_PER_NODE,
// else all tasks when the job has one node.
Result<Named> SlurmLocalWorld(const GetEnvFn& get_env, const Named& world, const Named& nnodes,
                              const Named& node_rank) {
  DS_ASSIGN_OR_RETURN(std::optional<Named> per_node, ReadInt(get_env, "SLURM_NTASKS_PER_NODE", 1));
  if (per_node) return *per_node;
  if (std::optional<std::string_view> spec = Get(get_env, "SLURM_TASKS_PER_NODE")) {
    DS_ASSIGN_OR_RETURN(int tasks, TasksOnNode(*spec, node_rank));
    return Named{"SLURM_TASKS_PER_NODE[" + std::to_string(node_rank.value) + "]", tasks};
  }
  if (nnodes.value == 1) return world;
  return Status::InvalidArgument(Show(nnodes) +
                                 " but neither SLURM_NTASKS_PER_NODE nor SLURM_TASKS_PER_NODE "
                                 "says how many tasks run on this node");
}

Result<std::string> SlurmMaster(const GetEnvFn& get_env, const Named& nnodes) {
  if (std::optional<std::string_view> addr = Get(get_env, "MASTER_ADDR")) return std::string(*addr);
  for (const char* name : {"SLURM_JOB_NODELIST", "SLURM_NODELIST"}) {
    if (std::optional<std::string_view> list = Get(get_env, name)) {
      Result<std::string> host = FirstSlurmHost(*list);
      if (!host.ok()) return host.status().WithContext(name);
      return host;
    }
  }
  if (nnodes.value == 1) return std::string(DistEnv().master_addr);
  return Status::InvalidArgument(Show(nnodes) +
                                 " but neither MASTER_ADDR nor SLURM_JOB_NODELIST says where "
                                 "rank 0 runs");
}

Result<DistEnv> FromSlurm(const GetEnvFn& get_env) {
  DS_ASSIGN_OR_RETURN(std::optional<Named> rank, ReadInt(get_env, "SLURM_PROCID", 0));
  DS_ASSIGN_OR_RETURN(std::optional<Named> world, ReadInt(get_env, "SLURM_NTASKS", 1));
  DS_RETURN_IF_ERROR(CheckBelow(*rank, *world));
  DS_ASSIGN_OR_RETURN(Named nnodes, ReadIntOr(get_env, "SLURM_NNODES", 1, {"SLURM_NNODES", 1}));
  DS_ASSIGN_OR_RETURN(Named node_rank, ReadIntOr(get_env, "SLURM_NODEID", 0, {"SLURM_NODEID", 0}));
  DS_RETURN_IF_ERROR(CheckBelow(node_rank, nnodes));
  DS_ASSIGN_OR_RETURN(Named local_world, SlurmLocalWorld(get_env, *world, nnodes, node_rank));
  if (local_world.value > world->value) {
    return Status::InvalidArgument(Show(local_world) + " is above " + Show(*world));
  }
  DS_ASSIGN_OR_RETURN(
      Named local_rank,
      ReadIntOr(get_env, "SLURM_LOCALID", 0, {"SLURM_LOCALID", rank->value % local_world.value}));
  DS_RETURN_IF_ERROR(CheckBelow(local_rank, local_world));

  DistEnv d;
  d.rank = rank->value;
  d.world_size = world->value;
  d.local_rank = local_rank.value;
  d.local_world_size = local_world.value;
  d.node_rank = node_rank.value;
  d.nnodes = nnodes.value;
  DS_ASSIGN_OR_RETURN(d.master_addr, SlurmMaster(get_env, nnodes));
  DS_ASSIGN_OR_RETURN(d.master_port, ReadPort(get_env));
  d.source = "slurm";
  return d;
}

// ---- host lists

bool IsHostChar(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '_';
}

// Checks the inside of one bracket ("03-05,9") and returns its first number as written ("03").
// Empty on success means malformed; `why` says how.
std::string_view FirstOfRanges(std::string_view inner, std::string* why) {
  std::string_view first;
  size_t pos = 0;
  while (pos <= inner.size()) {
    size_t end = inner.find(',', pos);
    if (end == std::string_view::npos) end = inner.size();
    std::string_view piece = inner.substr(pos, end - pos);
    size_t dash = piece.find('-');
    std::string_view lo = piece.substr(0, dash);
    std::string_view hi = dash == std::string_view::npos ? lo : piece.substr(dash + 1);
    std::optional<uint64_t> lo_v = ParseDecimal<uint64_t>(lo);
    std::optional<uint64_t> hi_v = ParseDecimal<uint64_t>(hi);
    if (!lo_v || !hi_v) {
      *why = "\"[" + std::string(inner) + "]\" is not a list of numbers and ranges like [1-3,7]";
      return {};
    }
    if (*lo_v > *hi_v) {
      *why = "the range " + std::string(piece) + " runs backwards";
      return {};
    }
    if (first.empty()) first = lo;
    pos = end + 1;
  }
  return first;
}

// ---- hostfiles

// The whitespace-separated fields of a hostfile line, without its '#' comment.
std::vector<std::string_view> HostfileFields(std::string_view line) {
  line = line.substr(0, line.find('#'));
  std::vector<std::string_view> fields;
  auto space = [](char c) { return std::isspace(static_cast<unsigned char>(c)) != 0; };
  for (size_t i = 0; i < line.size();) {
    if (space(line[i])) {
      ++i;
      continue;
    }
    size_t j = i;
    while (j < line.size() && !space(line[j])) ++j;
    fields.push_back(line.substr(i, j - i));
    i = j;
  }
  return fields;
}

std::string Where(std::string_view path, int line_no) {
  return std::string(path) + ":" + std::to_string(line_no) + ": ";
}

// One "<host> slots=<n>" line split into `fields`; `where` ("path:line: ") starts messages.
Result<Host> ParseHostLine(const std::vector<std::string_view>& fields, const std::string& where) {
  const std::string expected = " (expected \"<host> slots=<n>\")";
  const std::string host(fields[0]);
  if (host.starts_with("slots=")) {
    return Status::InvalidArgument(where + host + " has no host in front" + expected);
  }
  if (fields.size() < 2 || !fields[1].starts_with("slots=")) {
    return Status::InvalidArgument(where + "host " + host + " has no slots=<n>" + expected);
  }
  const std::string slots_field(fields[1]);
  std::optional<int> slots = ParseDecimal<int>(fields[1].substr(6));
  if (!slots || *slots < 1) {
    return Status::InvalidArgument(where + slots_field + " is not a positive integer" + expected);
  }
  if (fields.size() > 2) {
    return Status::InvalidArgument(where + "unexpected \"" + std::string(fields[2]) + "\" after " +
                                   slots_field + expected);
  }
  return Host{host, *slots};
}

Status DuplicateHost(const std::string& where, const std::string& host, int first_line) {
  return Status::InvalidArgument(where + "host " + host + " is listed again (first on line " +
                                 std::to_string(first_line) + ")");
}

}  // namespace

Result<DistEnv> DistEnvFromEnvironment(const GetEnvFn& get_env) {
  if (Get(get_env, "RANK") || Get(get_env, "WORLD_SIZE")) return FromTorchrun(get_env);
  if (Get(get_env, "SLURM_PROCID") && Get(get_env, "SLURM_NTASKS")) return FromSlurm(get_env);
  return DistEnv();
}

Result<std::string> FirstSlurmHost(std::string_view nodelist) {
  auto malformed = [&](const std::string& why) {
    return Status::InvalidArgument("SLURM node list \"" + std::string(nodelist) +
                                   "\" is malformed: " + why);
  };
  if (nodelist.empty()) return malformed("it is empty");
  std::string first;        // the first host, built while the first entry is read
  bool in_first = true;     // still inside the first comma-separated entry
  bool entry_empty = true;  // the current entry has no characters yet
  for (size_t i = 0; i < nodelist.size();) {
    const char c = nodelist[i];
    if (c == ',') {
      if (entry_empty) return malformed("an empty host name at offset " + std::to_string(i));
      in_first = false;
      entry_empty = true;
      ++i;
    } else if (c == '[') {
      const size_t close = nodelist.find(']', i);
      const size_t nested = nodelist.find('[', i + 1);
      if (close == std::string_view::npos || nested < close) {
        return malformed("'[' at offset " + std::to_string(i) + " has no matching ']'");
      }
      std::string why;
      std::string_view lo = FirstOfRanges(nodelist.substr(i + 1, close - i - 1), &why);
      if (lo.empty()) return malformed(why);
      if (in_first) first += lo;
      entry_empty = false;
      i = close + 1;
    } else if (c == ']') {
      return malformed("']' at offset " + std::to_string(i) + " has no matching '['");
    } else if (!IsHostChar(c)) {
      return malformed("unexpected character '" + std::string(1, c) + "' at offset " +
                       std::to_string(i));
    } else {
      if (in_first) first += c;
      entry_empty = false;
      ++i;
    }
  }
  if (entry_empty) return malformed("it ends with ','");
  return first;
}

Result<std::vector<Host>> ParseHostfile(std::string_view text, std::string_view path) {
  std::vector<Host> hosts;
  std::map<std::string, int, std::less<>> first_line;  // host -> line it first appeared on
  int line_no = 0;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos);
    if (end == std::string_view::npos) end = text.size();
    const std::vector<std::string_view> fields = HostfileFields(text.substr(pos, end - pos));
    pos = end + 1;
    ++line_no;
    if (fields.empty()) continue;
    const std::string where = Where(path, line_no);
    DS_ASSIGN_OR_RETURN(Host host, ParseHostLine(fields, where));
    auto [it, inserted] = first_line.emplace(host.name, line_no);
    if (!inserted) return DuplicateHost(where, host.name, it->second);
    hosts.push_back(std::move(host));
  }
  if (hosts.empty()) {
    return Status::InvalidArgument(std::string(path) +
                                   ": no hosts (expected lines like \"worker-1 slots=4\")");
  }
  return hosts;
}

}  // namespace ds::launch
