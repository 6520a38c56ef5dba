// fsched.conf parsing: values, defaults, host lists, and errors that name FILE:LINE.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "common/error.h"
#include "proto/config.h"

using fsched::proto::expand_hostlist;
using fsched::proto::parse_config;
using testing::ElementsAre;
using testing::HasSubstr;

namespace {

const char* kBase =
    "ControlMachine = head\n"
    "StateSaveLocation = /var/lib/fsched\n"
    "NodeName=n[1-3] CPUs=4 RealMemory=8000\n";

std::string error_of(const std::string& text) {
  try {
    parse_config(text, "/etc/fsched/fsched.conf");
  } catch (const fsched::Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Config, ReadsKeysCommentsAndDefaults) {
  auto c = parse_config(std::string(kBase) +
                            "# a comment line\n"
                            "CheckpointType = checkpoint/criu   # trailing comment\n"
                            "CRIU_MaxEpochs=3\n"
                            "  KillWait = 7\n"
                            "CRIU_LoadThresholdCPU = 0.9\n"
                            "PartitionName=batch Nodes=n[1-2] Default=YES MaxTime=60\n",
                        "f.conf");
  EXPECT_EQ(c.control_machine, "head");
  EXPECT_EQ(c.control_addr, "head");  // defaults to ControlMachine
  EXPECT_EQ(c.control_port, 6817);
  EXPECT_EQ(c.checkpoint_type, "checkpoint/criu");
  EXPECT_EQ(c.max_epochs, 3);
  EXPECT_EQ(c.kill_wait, 7);
  EXPECT_DOUBLE_EQ(c.load_threshold_cpu, 0.9);
  EXPECT_EQ(c.checkpoint_dir, "/var/lib/fsched/checkpoint");
  ASSERT_EQ(c.nodes.size(), 3u);
  EXPECT_EQ(c.nodes[2].name, "n3");
  EXPECT_EQ(c.nodes[2].cpus, 4);
  EXPECT_EQ(c.nodes[2].real_memory, 8000u);
  EXPECT_EQ(c.nodes[2].port, 6818);  // SlurmdPort
  EXPECT_EQ(c.nodes[2].addr, "n3");
  ASSERT_EQ(c.partitions.size(), 1u);
  EXPECT_THAT(c.partitions[0].nodes, ElementsAre("n1", "n2"));
  EXPECT_EQ(c.partitions[0].max_time, 3600);  // minutes, as slurm.conf writes it
  EXPECT_EQ(c.default_partition()->name, "batch");
}

TEST(Config, DefaultEpochsAndPartition) {
  auto c = parse_config(kBase, "f.conf");
  EXPECT_EQ(c.max_epochs, 5);  // state.checkpoints.num-retained of seed 000
  ASSERT_EQ(c.partitions.size(), 1u);
  EXPECT_THAT(c.partitions[0].nodes, ElementsAre("n1", "n2", "n3"));
}

TEST(Config, ErrorsNameFileAndLine) {
  EXPECT_THAT(error_of(std::string(kBase) + "\nFooBar = 1\n"),
              HasSubstr("/etc/fsched/fsched.conf:5: unknown key 'FooBar'"));
  EXPECT_THAT(error_of(std::string(kBase) + "KillWait = soon\n"),
              HasSubstr("fsched.conf:4: KillWait = soon"));
  EXPECT_THAT(error_of(std::string(kBase) + "CRIU_MaxEpochs = 0\n"),
              HasSubstr(":4: CRIU_MaxEpochs = 0"));
  EXPECT_THAT(error_of(std::string(kBase) + "CRIU_Incremental = maybe\n"),
              HasSubstr("expected YES or NO"));
  EXPECT_THAT(error_of(std::string(kBase) + "CRIU_LoadThresholdIO = 1.5\n"), HasSubstr("ratio"));
  EXPECT_THAT(error_of(std::string(kBase) + "CheckpointType = checkpoint/blcr\n"),
              HasSubstr(":4: CheckpointType"));
  EXPECT_THAT(error_of(std::string(kBase) + "KillWait\n"),
              HasSubstr(":4: 'KillWait': expected Key = Value"));
  EXPECT_THAT(error_of(std::string(kBase) + "KillWait = 1\nKillWait = 2\n"),
              HasSubstr(":5: KillWait is already set on line 4"));
  EXPECT_THAT(error_of(std::string(kBase) + "NodeName=n2 CPUs=1\n"),
              HasSubstr(":4: NodeName n2 is defined twice"));
  EXPECT_THAT(error_of(std::string(kBase) + "NodeName=x Colour=red\n"),
              HasSubstr("unknown key 'Colour'"));
  EXPECT_THAT(error_of(std::string(kBase) + "PartitionName=p Nodes=zz\n"),
              HasSubstr("node zz has no NodeName line"));
}

TEST(Config, RequiredKeys) {
  EXPECT_THAT(error_of("StateSaveLocation = /x\nNodeName=a\n"),
              HasSubstr("ControlMachine is required"));
  EXPECT_THAT(error_of("ControlMachine = h\nNodeName=a\n"),
              HasSubstr("StateSaveLocation is required"));
  EXPECT_THAT(error_of("ControlMachine = h\nStateSaveLocation = /x\n"), HasSubstr("NodeName"));
}

TEST(Config, HostLists) {
  EXPECT_THAT(expand_hostlist("a,b"), ElementsAre("a", "b"));
  EXPECT_THAT(expand_hostlist("node[1-3]"), ElementsAre("node1", "node2", "node3"));
  EXPECT_THAT(expand_hostlist("n[08-10],gpu[1,3]"),
              ElementsAre("n08", "n09", "n10", "gpu1", "gpu3"));
  EXPECT_THROW(expand_hostlist("n[3-1]"), fsched::Error);
  EXPECT_THROW(expand_hostlist("n[1-"), fsched::Error);
  EXPECT_THROW(expand_hostlist("n[a-b]"), fsched::Error);
}

// A key that parses but does nothing is reported (the daemons log it at start).
TEST(Config, KeysWithoutEffectAreWarnedOf) {
  auto quiet =
      parse_config(std::string(kBase) + "CRIU_Incremental = no\nCRIU_PreDump=no\n", "f.conf");
  EXPECT_THAT(quiet.warnings, testing::IsEmpty());
  auto c = parse_config(std::string(kBase) +
                            "CRIU_Incremental = yes\n"
                            "AuthInfo = socket=/run/munge.sock\n"
                            "NodeName=n9 CPUs=2 Sockets=1\n",
                        "f.conf");
  ASSERT_EQ(c.warnings.size(), 3u);
  EXPECT_THAT(
      c.warnings[0],
      HasSubstr("f.conf:4: CRIU_Incremental = yes: incremental checkpoints are not implemented"));
  EXPECT_THAT(c.warnings[1],
              HasSubstr("f.conf:5: AuthInfo = socket=/run/munge.sock: has no effect"));
  EXPECT_THAT(c.warnings[2],
              HasSubstr("f.conf:6: Sockets = 1: accepted for slurm.conf compatibility"));
}
