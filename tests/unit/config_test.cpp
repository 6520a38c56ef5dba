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
                            "SlurmctldTimeout = 60\n"
                            "AuthInfo = socket=/run/munge.sock\n"
                            "NodeName=n9 CPUs=2 Sockets=1\n",
                        "f.conf");
  ASSERT_EQ(c.warnings.size(), 2u);
  EXPECT_THAT(
      c.warnings[0],
      HasSubstr("f.conf:4: SlurmctldTimeout = 60: there is no backup controller to take over"));
  EXPECT_THAT(c.warnings[1],
              HasSubstr("f.conf:6: Sockets = 1: accepted for slurm.conf compatibility"));
  // AuthInfo, the node-failure timeouts, incremental checkpoints and pre-dump all have
  // an effect now: none is warned of.
  auto nf = parse_config(std::string(kBase) +
                             "AuthInfo = cred_expire=180,ttl=180,requeue_timeout=30\n"
                             "BatchStartTimeout = 10\nSlurmdTimeout = 15\nReturnToService = 0\n"
                             "CRIU_Incremental = yes\nCRIU_FullEvery = 3\n"
                             "CRIU_PreDump = yes\nCRIU_PreDumpDelay = 2\n"
                             "CRIU_TrackMethod = Hash\n",
                         "f.conf");
  EXPECT_THAT(nf.warnings, testing::IsEmpty());
  EXPECT_EQ(nf.track_method, "hash");
  EXPECT_EQ(parse_config(kBase, "f.conf").track_method, "");
  try {
    parse_config(std::string(kBase) + "CRIU_TrackMethod = soft-dirty\n", "f.conf");
    ADD_FAILURE() << "CRIU_TrackMethod = soft-dirty accepted";
  } catch (const fsched::Error& e) {
    EXPECT_THAT(e.what(), HasSubstr("CRIU_TrackMethod = soft-dirty: expected kernel or hash"));
  }
}

// ---- node failure: AuthInfo, SlurmdTimeout, HeartbeatInterval, ReturnToService -------

TEST(Config, NodeFailureDefaults) {
  auto c = parse_config(kBase, "f.conf");
  EXPECT_EQ(c.heartbeat_interval, 10);
  EXPECT_EQ(c.slurmd_timeout, 300);
  EXPECT_EQ(c.requeue_timeout, 60);
  EXPECT_EQ(c.batch_start_timeout, 10);
  EXPECT_EQ(c.cred_expire, 120);
  EXPECT_EQ(c.munge_ttl, 300);  // munged's own default
  EXPECT_TRUE(c.return_to_service);
  EXPECT_EQ(c.auth_info, "");
}

// The seed's aggressive block, as written there: HeartbeatInterval is not set, and its
// default follows SlurmdTimeout down (15 / 3 = 5) instead of refusing the block.
TEST(Config, SeedAggressiveBlock) {
  auto c = parse_config(std::string(kBase) +
                            "BatchStartTimeout=10\n"
                            "SlurmdTimeout=15\n"
                            "AuthInfo=cred_expire=180,ttl=180,requeue_timeout=30\n",
                        "f.conf");
  EXPECT_EQ(c.batch_start_timeout, 10);
  EXPECT_EQ(c.slurmd_timeout, 15);
  EXPECT_EQ(c.cred_expire, 180);
  EXPECT_EQ(c.munge_ttl, 180);
  EXPECT_EQ(c.requeue_timeout, 30);
  EXPECT_EQ(c.heartbeat_interval, 5);
  EXPECT_EQ(c.auth_info, "cred_expire=180,ttl=180,requeue_timeout=30");
}

TEST(Config, AuthInfoPartsInAnyOrderAndSubset) {
  auto c = parse_config(std::string(kBase) + "AuthInfo = requeue_timeout=0, TTL=60\n", "f.conf");
  EXPECT_EQ(c.requeue_timeout, 0);
  EXPECT_EQ(c.munge_ttl, 60);
  EXPECT_EQ(c.cred_expire, 120);  // untouched
  auto s =
      parse_config(std::string(kBase) + "AuthInfo = socket=/run/m.sock,cred_expire=5\n", "f.conf");
  EXPECT_EQ(s.munge_socket, "/run/m.sock");
  EXPECT_EQ(s.munge_socket_line, 4);
  EXPECT_EQ(s.cred_expire, 5);
}

TEST(Config, AuthInfoErrors) {
  auto err = [](const std::string& value) {
    return error_of(std::string(kBase) + "AuthInfo = " + value + "\n");
  };
  const std::string at = "/etc/fsched/fsched.conf:4: AuthInfo = ";
  EXPECT_THAT(err("requeue_timeout=abc"),
              HasSubstr(at + "requeue_timeout=abc: requeue_timeout=abc: not an integer"));
  EXPECT_THAT(err("ttl=12s"), HasSubstr(at + "ttl=12s: ttl=12s: not an integer"));
  EXPECT_THAT(err("ttl="), HasSubstr(at + "ttl=: ttl=: not an integer"));
  EXPECT_THAT(err("cred_expire=0"), HasSubstr("cred_expire=0: out of range 1 to 86400"));
  EXPECT_THAT(err("ttl=86401"), HasSubstr("ttl=86401: out of range 1 to 86400"));
  EXPECT_THAT(err("requeue_timeout=-1"), HasSubstr("requeue_timeout=-1: out of range 0 to 86400"));
  EXPECT_THAT(err("requeue_timeout=99999999999999999999"), HasSubstr("out of range"));
  EXPECT_THAT(err("ttl=5,colour=red"),
              HasSubstr(at + "ttl=5,colour=red: unknown key 'colour' (expected cred_expire"));
  EXPECT_THAT(err("cred_expire"), HasSubstr(at + "cred_expire: 'cred_expire': expected key=value"));
  EXPECT_THAT(err("ttl=5,cred_expire=6,ttl=7"),
              HasSubstr(at + "ttl=5,cred_expire=6,ttl=7: ttl is given twice"));
  EXPECT_THAT(error_of(std::string(kBase) + "MungeSocket = /a\nAuthInfo = socket=/b\n"),
              HasSubstr(":5: AuthInfo = socket=/b: socket= and MungeSocket (line 4)"));
  EXPECT_THAT(error_of(std::string(kBase) + "AuthInfo = socket=/b\nMungeSocket = /a\n"),
              HasSubstr(":5: MungeSocket = /a: munged's socket is already set"));
}

TEST(Config, TimeoutValueErrors) {
  EXPECT_THAT(error_of(std::string(kBase) + "SlurmdTimeout = 0\n"),
              HasSubstr(":4: SlurmdTimeout = 0: expected an integer"));
  EXPECT_THAT(error_of(std::string(kBase) + "BatchStartTimeout = soon\n"),
              HasSubstr(":4: BatchStartTimeout = soon"));
  EXPECT_THAT(error_of(std::string(kBase) + "HeartbeatInterval = -2\n"),
              HasSubstr(":4: HeartbeatInterval = -2"));
  EXPECT_THAT(error_of(std::string(kBase) + "ReturnToService = 2\n"),
              HasSubstr(":4: ReturnToService = 2: expected 0 or 1"));
  EXPECT_FALSE(
      parse_config(std::string(kBase) + "ReturnToService = 0\n", "f.conf").return_to_service);
}

// One lost heartbeat must not cost a node its lease: refused with both keys named, on
// the line of the one that came last, whichever order they are in.
TEST(Config, HeartbeatMustFitTwiceInSlurmdTimeout) {
  EXPECT_THAT(error_of(std::string(kBase) + "HeartbeatInterval = 8\nSlurmdTimeout = 15\n"),
              HasSubstr("fsched.conf:5: HeartbeatInterval = 8 and SlurmdTimeout = 15: "
                        "HeartbeatInterval * 2 must not exceed SlurmdTimeout"));
  EXPECT_THAT(error_of(std::string(kBase) + "SlurmdTimeout = 15\nKillWait = 3\n"
                                            "HeartbeatInterval = 8\n"),
              HasSubstr("fsched.conf:6: HeartbeatInterval = 8 and SlurmdTimeout = 15"));
  EXPECT_THAT(error_of(std::string(kBase) + "HeartbeatInterval = 151\n"),
              HasSubstr(":4: HeartbeatInterval = 151 and SlurmdTimeout = 300 (default)"));
  auto edge =
      parse_config(std::string(kBase) + "HeartbeatInterval = 3\nSlurmdTimeout = 6\n", "f.conf");
  EXPECT_EQ(edge.heartbeat_interval, 3);
  EXPECT_EQ(edge.slurmd_timeout, 6);
  // Unset HeartbeatInterval: SlurmdTimeout/3, at most 10, at least 1.
  EXPECT_EQ(parse_config(std::string(kBase) + "SlurmdTimeout = 6\n", "f.conf").heartbeat_interval,
            2);
  EXPECT_EQ(parse_config(std::string(kBase) + "SlurmdTimeout = 2\n", "f.conf").heartbeat_interval,
            1);
  EXPECT_THAT(error_of(std::string(kBase) + "SlurmdTimeout = 1\n"),
              HasSubstr(":4: HeartbeatInterval = 1 (default) and SlurmdTimeout = 1"));
}

// Preemption (issue 15): Slurm's keys, their errors, and a key that does nothing alone.
TEST(Config, Preemption) {
  auto c = parse_config(std::string(kBase) +
                            "PreemptType = preempt/partition_prio\n"
                            "PreemptMode = checkpoint\n"
                            "PreemptExemptTime = 00:02:00\n"
                            "PartitionName=low Nodes=n[1-3] PriorityTier=1 Default=YES\n"
                            "PartitionName=high Nodes=n[1-3] PriorityTier=10\n",
                        "f.conf");
  EXPECT_TRUE(c.preempt_partition_prio);
  EXPECT_EQ(c.preempt_mode, fsched::proto::PreemptMode::Checkpoint);
  EXPECT_EQ(c.preempt_exempt_time, 120);
  EXPECT_EQ(c.partition("low")->priority_tier, 1);
  EXPECT_EQ(c.partition("high")->priority_tier, 10);
  EXPECT_THAT(c.warnings, testing::IsEmpty());
  auto d = parse_config(kBase, "f.conf");
  EXPECT_FALSE(d.preempt_partition_prio);
  EXPECT_EQ(d.preempt_mode, fsched::proto::PreemptMode::Off);
  EXPECT_EQ(d.preempt_exempt_time, 0);
  EXPECT_EQ(
      parse_config(std::string(kBase) + "PreemptExemptTime = -1\n", "f.conf").preempt_exempt_time,
      0);

  auto alone = parse_config(std::string(kBase) + "PreemptMode = REQUEUE\n", "f.conf");
  ASSERT_EQ(alone.warnings.size(), 1u);
  EXPECT_THAT(alone.warnings[0],
              HasSubstr("f.conf:4: PreemptMode = REQUEUE: has no effect without PreemptType"));
  auto off = parse_config(std::string(kBase) + "PreemptType = preempt/partition_prio\n", "f.conf");
  ASSERT_EQ(off.warnings.size(), 1u);
  EXPECT_THAT(off.warnings[0], HasSubstr("has no effect while PreemptMode is OFF"));

  EXPECT_THAT(error_of(std::string(kBase) + "PreemptMode = GANG\n"),
              HasSubstr("fsched.conf:4: PreemptMode = GANG: expected OFF, CANCEL, REQUEUE, "
                        "CHECKPOINT or SUSPEND[,GANG]"));
  for (const char* v : {"SUSPEND,GANG", "suspend"})
    EXPECT_EQ(parse_config(std::string(kBase) + "PreemptType = preempt/partition_prio\n" +
                               "PreemptMode = " + v + "\n",
                           "f.conf")
                  .preempt_mode,
              fsched::proto::PreemptMode::Suspend)
        << v;
  EXPECT_THAT(error_of(std::string(kBase) + "PreemptType = preempt/qos\n"),
              HasSubstr("fsched.conf:4: PreemptType = preempt/qos: expected preempt/none or "
                        "preempt/partition_prio"));
  EXPECT_THAT(error_of(std::string(kBase) + "PreemptExemptTime = soon\n"),
              HasSubstr("fsched.conf:4: PreemptExemptTime = soon:"));
  EXPECT_THAT(error_of(std::string(kBase) + "PartitionName=p Nodes=n1 PriorityTier=70000\n"),
              HasSubstr("fsched.conf:4:"));
}

TEST(Config, RestApi) {
  auto d = parse_config(kBase, "f.conf");
  EXPECT_EQ(d.rest_port, 0);
  EXPECT_EQ(d.jwt_key, "/var/lib/fsched/jwt_hs256.key");
  auto c = parse_config(std::string(kBase) +
                            "RestPort = 6820\nAuthAltTypes = auth/jwt\nRestAddr = ::1\n"
                            "AuthAltParameters = jwt_key=/etc/fsched/jwt.key\nWebRoot = /srv/web\n",
                        "f.conf");
  EXPECT_EQ(c.rest_port, 6820);
  EXPECT_EQ(c.rest_addr, "::1");
  EXPECT_EQ(c.jwt_key, "/etc/fsched/jwt.key");
  EXPECT_EQ(c.web_root, "/srv/web");
  EXPECT_THAT(c.warnings, testing::IsEmpty());
  EXPECT_EQ(parse_config(std::string(kBase) + "RestPort=1\nAuthAltTypes=auth/jwt\n"
                                              "RestAddr=127.0.0.2\n",
                         "f.conf")
                .rest_addr,
            "127.0.0.2");

  EXPECT_THAT(error_of(std::string(kBase) + "RestPort = 6820\n"),
              HasSubstr("fsched.conf:4: RestPort = 6820: the REST API authenticates with JWT: "
                        "set AuthAltTypes = auth/jwt"));
  for (const char* addr : {"0.0.0.0", "10.1.2.3", "127.evil.example", "head"})
    EXPECT_THAT(error_of(std::string(kBase) + "RestPort = 1\nAuthAltTypes = auth/jwt\n" +
                         "RestAddr = " + addr + "\n"),
                HasSubstr(fmt::format("fsched.conf:6: RestAddr = {}: without TLS the REST API is "
                                      "served on a loopback address only",
                                      addr)))
        << addr;
  auto tls = parse_config(std::string(kBase) +
                              "RestPort = 1\nAuthAltTypes = auth/jwt\nRestAddr = 0.0.0.0\n"
                              "RestTLSCertFile = /etc/fsched/c.pem\nRestTLSKeyFile = /k.pem\n",
                          "f.conf");
  EXPECT_EQ(tls.rest_addr, "0.0.0.0");
  EXPECT_EQ(tls.rest_tls_cert, "/etc/fsched/c.pem");
  EXPECT_EQ(tls.rest_tls_key, "/k.pem");
  EXPECT_THAT(error_of(std::string(kBase) + "RestPort = 1\nAuthAltTypes = auth/jwt\n" +
                       "RestTLSKeyFile = /k.pem\n"),
              HasSubstr("fsched.conf:6: RestTLSKeyFile: TLS needs both RestTLSCertFile and "
                        "RestTLSKeyFile"));
  EXPECT_THAT(error_of(std::string(kBase) + "AuthAltTypes = auth/munge\n"),
              HasSubstr("fsched.conf:4: AuthAltTypes = auth/munge: only auth/jwt is supported"));
  EXPECT_THAT(error_of(std::string(kBase) + "AuthAltParameters = key=/x\n"),
              HasSubstr("AuthAltParameters = key=/x: expected jwt_key=PATH"));
  // Without RestPort, the REST keys do nothing: said at start.
  auto off =
      parse_config(std::string(kBase) + "WebRoot = /srv/web\nAuthAltTypes = auth/jwt\n", "f.conf");
  ASSERT_EQ(off.warnings.size(), 2u);
  EXPECT_THAT(off.warnings[0], HasSubstr("f.conf:4: WebRoot: has no effect without RestPort"));
  EXPECT_THAT(off.warnings[1], HasSubstr("f.conf:5: AuthAltTypes: has no effect without RestPort"));
}
