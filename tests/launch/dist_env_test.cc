// Where a rank sits in the job, read from torchrun's and SLURM's variables exactly as they set
// them; every bad or partial setting is an error naming the variable and its value; SLURM's
// compressed node lists and DeepSpeed's hostfiles parse, and their damage is named.
#include "launch/dist_env.h"

#include <map>
#include <string>

#include "testing/matchers.h"

namespace ds::launch {
namespace {

using ::ds::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::Eq;

using Vars = std::map<std::string, std::string>;

Result<DistEnv> Read(const Vars& vars) {
  return DistEnvFromEnvironment([&vars](const char* name) -> const char* {
    auto it = vars.find(name);
    return it == vars.end() ? nullptr : it->second.c_str();
  });
}

MATCHER_P2(HostIs, name, slots, "") { return arg.name == name && arg.slots == slots; }

// ---- single process

TEST(DistEnvTest, NothingSetIsASingleProcess) {
  DS_ASSERT_OK_AND_ASSIGN(DistEnv d, Read({}));
  EXPECT_EQ(d.rank, 0);
  EXPECT_EQ(d.local_rank, 0);
  EXPECT_EQ(d.world_size, 1);
  EXPECT_EQ(d.local_world_size, 1);
  EXPECT_EQ(d.node_rank, 0);
  EXPECT_EQ(d.nnodes, 1);
  EXPECT_EQ(d.master_addr, "127.0.0.1");
  EXPECT_EQ(d.master_port, 29500);
  EXPECT_EQ(d.source, "single");
}

TEST(DistEnvTest, EmptyVariablesCountAsUnset) {
  DS_ASSERT_OK_AND_ASSIGN(DistEnv d, Read({{"RANK", ""}, {"WORLD_SIZE", ""}}));
  EXPECT_EQ(d.source, "single");
}

TEST(DistEnvTest, ShellInsideASlurmAllocationIsASingleProcess) {
  DS_ASSERT_OK_AND_ASSIGN(
      DistEnv d, Read({{"SLURM_JOB_ID", "77"}, {"SLURM_NTASKS", "8"}, {"SLURM_NNODES", "2"}}));
  EXPECT_EQ(d.source, "single");
  EXPECT_EQ(d.world_size, 1);
}

// ---- torchrun

TEST(DistEnvTest, TorchrunVariables) {
  DS_ASSERT_OK_AND_ASSIGN(DistEnv d, Read({{"RANK", "5"},
                                           {"LOCAL_RANK", "1"},
                                           {"WORLD_SIZE", "8"},
                                           {"LOCAL_WORLD_SIZE", "4"},
                                           {"GROUP_RANK", "1"},
                                           {"NODE_RANK", "0"},
                                           {"MASTER_ADDR", "node0"},
                                           {"MASTER_PORT", "1234"}}));
  EXPECT_EQ(d.rank, 5);
  EXPECT_EQ(d.local_rank, 1);
  EXPECT_EQ(d.world_size, 8);
  EXPECT_EQ(d.local_world_size, 4);
  EXPECT_EQ(d.node_rank, 1);  // GROUP_RANK before NODE_RANK
  EXPECT_EQ(d.nnodes, 2);
  EXPECT_EQ(d.master_addr, "node0");
  EXPECT_EQ(d.master_port, 1234);
  EXPECT_EQ(d.source, "torchrun");
}

TEST(DistEnvTest, TorchrunDefaultsToOneNode) {
  DS_ASSERT_OK_AND_ASSIGN(DistEnv d, Read({{"RANK", "3"}, {"WORLD_SIZE", "4"}}));
  EXPECT_EQ(d.local_rank, 3);
  EXPECT_EQ(d.local_world_size, 4);
  EXPECT_EQ(d.node_rank, 0);
  EXPECT_EQ(d.nnodes, 1);
  EXPECT_EQ(d.master_addr, "127.0.0.1");
  EXPECT_EQ(d.master_port, 29500);
}

TEST(DistEnvTest, TorchrunDerivesFromDeepSpeedsLocalSize) {
  DS_ASSERT_OK_AND_ASSIGN(DistEnv d,
                          Read({{"RANK", "5"}, {"WORLD_SIZE", "8"}, {"LOCAL_SIZE", "2"}}));
  EXPECT_EQ(d.local_world_size, 2);
  EXPECT_EQ(d.local_rank, 1);
  EXPECT_EQ(d.node_rank, 2);
  EXPECT_EQ(d.nnodes, 4);
}

TEST(DistEnvTest, TorchrunReadsNodeRankWithoutGroupRank) {
  DS_ASSERT_OK_AND_ASSIGN(
      DistEnv d,
      Read({{"RANK", "1"}, {"WORLD_SIZE", "4"}, {"LOCAL_WORLD_SIZE", "2"}, {"NODE_RANK", "1"}}));
  EXPECT_EQ(d.node_rank, 1);
}

TEST(DistEnvTest, TorchrunWinsOverSlurm) {
  DS_ASSERT_OK_AND_ASSIGN(
      DistEnv d,
      Read({{"RANK", "1"}, {"WORLD_SIZE", "2"}, {"SLURM_PROCID", "0"}, {"SLURM_NTASKS", "1"}}));
  EXPECT_EQ(d.source, "torchrun");
  EXPECT_EQ(d.rank, 1);
}

TEST(DistEnvTest, OnlyOneOfRankAndWorldSizeIsAnError) {
  EXPECT_THAT(Read({{"RANK", "3"}}),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("RANK=3 is set but WORLD_SIZE is not: a launched rank needs both "
                          "(torchrun and dsrun set them); unset RANK to run a single process")));
  EXPECT_THAT(Read({{"WORLD_SIZE", "4"}}),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("WORLD_SIZE=4 is set but RANK is not: a launched rank needs both "
                          "(torchrun and dsrun set them); unset WORLD_SIZE to run a single "
                          "process")));
}

TEST(DistEnvTest, BadTorchrunValuesNameTheVariable) {
  const Vars base = {{"RANK", "1"}, {"WORLD_SIZE", "8"}, {"LOCAL_WORLD_SIZE", "4"}};
  auto with = [&](const Vars& changes) {
    Vars v = base;
    for (const auto& [k, val] : changes) v[k] = val;
    return Read(v);
  };
  const std::pair<Vars, std::string> cases[] = {
      {{{"RANK", "8"}}, "RANK=8 is not below WORLD_SIZE=8"},
      {{{"RANK", "x"}}, "RANK=x is not a non-negative integer"},
      {{{"RANK", "-1"}}, "RANK=-1 is not a non-negative integer"},
      {{{"RANK", " 1"}}, "RANK= 1 is not a non-negative integer"},
      {{{"RANK", "99999999999"}}, "RANK=99999999999 is not a non-negative integer"},
      {{{"WORLD_SIZE", "0"}}, "WORLD_SIZE=0 is not a positive integer"},
      {{{"LOCAL_WORLD_SIZE", "3"}},
       "WORLD_SIZE=8 is not a multiple of LOCAL_WORLD_SIZE=3 (every node runs the same number "
       "of ranks)"},
      {{{"LOCAL_WORLD_SIZE", "16"}},
       "WORLD_SIZE=8 is not a multiple of LOCAL_WORLD_SIZE=16 (every node runs the same number "
       "of ranks)"},
      {{{"LOCAL_RANK", "4"}}, "LOCAL_RANK=4 is not below LOCAL_WORLD_SIZE=4"},
      {{{"GROUP_RANK", "2"}},
       "GROUP_RANK=2 is not below the number of nodes 2 (WORLD_SIZE=8 / LOCAL_WORLD_SIZE=4)"},
      {{{"NODE_RANK", "5"}},
       "NODE_RANK=5 is not below the number of nodes 2 (WORLD_SIZE=8 / LOCAL_WORLD_SIZE=4)"},
      {{{"MASTER_PORT", "70000"}}, "MASTER_PORT=70000 is not a TCP port (1 to 65535)"},
      {{{"MASTER_PORT", "29500x"}}, "MASTER_PORT=29500x is not a TCP port (1 to 65535)"},
      {{{"MASTER_PORT", "0"}}, "MASTER_PORT=0 is not a TCP port (1 to 65535)"},
  };
  for (const auto& [changes, message] : cases) {
    EXPECT_THAT(with(changes), StatusIs(StatusCode::kInvalidArgument, Eq(message)));
  }
  EXPECT_THAT(Read({{"RANK", "1"}, {"WORLD_SIZE", "8"}, {"LOCAL_SIZE", "3"}}),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("WORLD_SIZE=8 is not a multiple of LOCAL_SIZE=3 (every node runs the "
                          "same number of ranks)")));
}

// ---- SLURM

const Vars kTwoNodes = {{"SLURM_JOB_ID", "77"},
                        {"SLURM_PROCID", "5"},
                        {"SLURM_NTASKS", "8"},
                        {"SLURM_LOCALID", "1"},
                        {"SLURM_NODEID", "1"},
                        {"SLURM_NNODES", "2"},
                        {"SLURM_TASKS_PER_NODE", "4(x2)"},
                        {"SLURM_JOB_NODELIST", "gpu[03-04]"}};

Result<DistEnv> ReadSlurm(const Vars& changes, const std::vector<std::string>& unset = {}) {
  Vars v = kTwoNodes;
  for (const auto& [k, val] : changes) v[k] = val;
  for (const std::string& k : unset) v.erase(k);
  return Read(v);
}

TEST(DistEnvTest, SlurmTask) {
  DS_ASSERT_OK_AND_ASSIGN(DistEnv d, ReadSlurm({}));
  EXPECT_EQ(d.rank, 5);
  EXPECT_EQ(d.local_rank, 1);
  EXPECT_EQ(d.world_size, 8);
  EXPECT_EQ(d.local_world_size, 4);
  EXPECT_EQ(d.node_rank, 1);
  EXPECT_EQ(d.nnodes, 2);
  EXPECT_EQ(d.master_addr, "gpu03");
  EXPECT_EQ(d.master_port, 29500);
  EXPECT_EQ(d.source, "slurm");
}

TEST(DistEnvTest, SlurmTasksPerNodeForms) {
  const Vars three_nodes = {
      {"SLURM_NTASKS", "11"}, {"SLURM_NNODES", "3"}, {"SLURM_TASKS_PER_NODE", "4(x2),3"}};
  auto on_node = [&](const std::string& node, const std::string& procid) {
    Vars v = three_nodes;
    v["SLURM_NODEID"] = node;
    v["SLURM_PROCID"] = procid;
    v["SLURM_LOCALID"] = "0";
    return ReadSlurm(v);
  };
  DS_ASSERT_OK_AND_ASSIGN(DistEnv n1, on_node("1", "4"));
  EXPECT_EQ(n1.local_world_size, 4);
  DS_ASSERT_OK_AND_ASSIGN(DistEnv n2, on_node("2", "8"));
  EXPECT_EQ(n2.local_world_size, 3);
  EXPECT_EQ(n2.nnodes, 3);

  DS_ASSERT_OK_AND_ASSIGN(DistEnv plain, ReadSlurm({{"SLURM_TASKS_PER_NODE", "4,4"}}));
  EXPECT_EQ(plain.local_world_size, 4);
  // SLURM_NTASKS_PER_NODE (from --ntasks-per-node) comes first.
  DS_ASSERT_OK_AND_ASSIGN(
      DistEnv per_node,
      ReadSlurm({{"SLURM_NTASKS_PER_NODE", "2"}, {"SLURM_NTASKS", "4"}, {"SLURM_PROCID", "3"}}));
  EXPECT_EQ(per_node.local_world_size, 2);
  // One node: all tasks run on it.
  DS_ASSERT_OK_AND_ASSIGN(
      DistEnv one, ReadSlurm({{"SLURM_NNODES", "1"}, {"SLURM_NODEID", "0"}},
                             {"SLURM_TASKS_PER_NODE", "SLURM_LOCALID", "SLURM_JOB_NODELIST"}));
  EXPECT_EQ(one.local_world_size, 8);
  EXPECT_EQ(one.local_rank, 5);
  EXPECT_EQ(one.master_addr, "127.0.0.1");
}

TEST(DistEnvTest, SlurmMasterSources) {
  DS_ASSERT_OK_AND_ASSIGN(DistEnv over,
                          ReadSlurm({{"MASTER_ADDR", "10.0.0.9"}, {"MASTER_PORT", "4242"}}));
  EXPECT_EQ(over.master_addr, "10.0.0.9");
  EXPECT_EQ(over.master_port, 4242);
  DS_ASSERT_OK_AND_ASSIGN(DistEnv old_name, ReadSlurm({{"SLURM_NODELIST", "rack1-node[007-010]"}},
                                                      {"SLURM_JOB_NODELIST"}));
  EXPECT_EQ(old_name.master_addr, "rack1-node007");
}

TEST(DistEnvTest, BadSlurmValuesNameTheVariable) {
  const std::pair<Vars, std::string> cases[] = {
      {{{"SLURM_PROCID", "8"}}, "SLURM_PROCID=8 is not below SLURM_NTASKS=8"},
      {{{"SLURM_NTASKS", "zero"}}, "SLURM_NTASKS=zero is not a positive integer"},
      {{{"SLURM_NODEID", "2"}}, "SLURM_NODEID=2 is not below SLURM_NNODES=2"},
      {{{"SLURM_LOCALID", "4"}}, "SLURM_LOCALID=4 is not below SLURM_TASKS_PER_NODE[1]=4"},
      {{{"SLURM_NTASKS_PER_NODE", "16"}}, "SLURM_NTASKS_PER_NODE=16 is above SLURM_NTASKS=8"},
      {{{"SLURM_TASKS_PER_NODE", "4(x1)"}},
       "SLURM_TASKS_PER_NODE=4(x1) lists 1 node; SLURM_NODEID=1 is not among them"},
      {{{"SLURM_JOB_NODELIST", "gpu[03"}},
       "SLURM_JOB_NODELIST: SLURM node list \"gpu[03\" is malformed: '[' at offset 3 has no "
       "matching ']'"},
  };
  for (const auto& [changes, message] : cases) {
    EXPECT_THAT(ReadSlurm(changes), StatusIs(StatusCode::kInvalidArgument, Eq(message)));
  }
  for (const char* spec : {"4(x2", "4(2)", "4(x0)", "0", "4,,4", "(x2)", "4(x2)x", "4x"}) {
    EXPECT_THAT(ReadSlurm({{"SLURM_TASKS_PER_NODE", spec}}),
                StatusIs(StatusCode::kInvalidArgument,
                         Eq("SLURM_TASKS_PER_NODE=" + std::string(spec) +
                            " is not a list of task counts like \"4(x2),3\"")))
        << spec;
  }
  EXPECT_THAT(ReadSlurm({}, {"SLURM_TASKS_PER_NODE"}),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("SLURM_NNODES=2 but neither SLURM_NTASKS_PER_NODE nor "
                          "SLURM_TASKS_PER_NODE says how many tasks run on this node")));
  EXPECT_THAT(ReadSlurm({}, {"SLURM_JOB_NODELIST"}),
              StatusIs(StatusCode::kInvalidArgument,
                       Eq("SLURM_NNODES=2 but neither MASTER_ADDR nor SLURM_JOB_NODELIST says "
                          "where rank 0 runs")));
}

// ---- node lists

TEST(FirstSlurmHostTest, CompressedLists) {
  const std::pair<const char*, const char*> cases[] = {
      {"gpu[03-05,9],cpu1", "gpu03"},
      {"rack1-node[007-010]", "rack1-node007"},
      {"n[1,3]x", "n1x"},
      {"node1", "node1"},
      {"node1,node2", "node1"},
      {"cpu1,gpu[03-05]", "cpu1"},
      {"n[1-2]-ib[3-4]", "n1-ib3"},
      {"n[5]", "n5"},
      {"host.example.com", "host.example.com"},
  };
  for (const auto& [list, first] : cases) {
    DS_ASSERT_OK_AND_ASSIGN(std::string host, FirstSlurmHost(list));
    EXPECT_EQ(host, first) << list;
  }
}

TEST(FirstSlurmHostTest, MalformedListsAreNamed) {
  const std::pair<const char*, const char*> cases[] = {
      {"", "it is empty"},
      {"gpu[03", "'[' at offset 3 has no matching ']'"},
      {"n[1-[2]]", "'[' at offset 1 has no matching ']'"},
      {"gpu03]", "']' at offset 5 has no matching '['"},
      {"gpu[]", "\"[]\" is not a list of numbers and ranges like [1-3,7]"},
      {"gpu[a-b]", "\"[a-b]\" is not a list of numbers and ranges like [1-3,7]"},
      {"gpu[1,]", "\"[1,]\" is not a list of numbers and ranges like [1-3,7]"},
      {"gpu[1-2-3]", "\"[1-2-3]\" is not a list of numbers and ranges like [1-3,7]"},
      {"gpu[5-3]", "the range 5-3 runs backwards"},
      {"a,,b", "an empty host name at offset 2"},
      {"a,", "it ends with ','"},
      {"a b", "unexpected character ' ' at offset 1"},
      {"gpu[01-02],cpu[", "'[' at offset 14 has no matching ']'"},  // a later entry counts too
  };
  for (const auto& [list, why] : cases) {
    EXPECT_THAT(FirstSlurmHost(list),
                StatusIs(StatusCode::kInvalidArgument,
                         Eq("SLURM node list \"" + std::string(list) + "\" is malformed: " + why)))
        << list;
  }
}

// ---- hostfiles

TEST(HostfileTest, DeepSpeedFormat) {
  DS_ASSERT_OK_AND_ASSIGN(
      std::vector<Host> hosts,
      ParseHostfile("# our cluster\nworker-1 slots=4\n\n  worker-2\tslots=8   # big one\r\n"
                    "10.0.0.3 slots=1",
                    "hosts"));
  EXPECT_THAT(hosts,
              ElementsAre(HostIs("worker-1", 4), HostIs("worker-2", 8), HostIs("10.0.0.3", 1)));
}

TEST(HostfileTest, DamageIsNamedWithPathAndLine) {
  const std::string expected = " (expected \"<host> slots=<n>\")";
  const std::pair<const char*, std::string> cases[] = {
      {"# header\nworker-1\n", "hosts:2: host worker-1 has no slots=<n>" + expected},
      {"worker-1 gpus=4", "hosts:1: host worker-1 has no slots=<n>" + expected},
      {"worker-1 slots=0", "hosts:1: slots=0 is not a positive integer" + expected},
      {"worker-1 slots=four", "hosts:1: slots=four is not a positive integer" + expected},
      {"worker-1 slots=", "hosts:1: slots= is not a positive integer" + expected},
      {"worker-1 slots=4 gpus=2", "hosts:1: unexpected \"gpus=2\" after slots=4" + expected},
      {"slots=4", "hosts:1: slots=4 has no host in front" + expected},
      {"a slots=1\nb slots=2\na slots=3", "hosts:3: host a is listed again (first on line 1)"},
      {"# nothing\n\n", "hosts: no hosts (expected lines like \"worker-1 slots=4\")"},
      {"", "hosts: no hosts (expected lines like \"worker-1 slots=4\")"},
  };
  for (const auto& [text, message] : cases) {
    EXPECT_THAT(ParseHostfile(text, "hosts"), StatusIs(StatusCode::kInvalidArgument, Eq(message)))
        << text;
  }
}

}  // namespace
}  // namespace ds::launch
