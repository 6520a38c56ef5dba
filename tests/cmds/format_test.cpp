// The commands' text output from the API's JSON (docs/scheduler.md), against
// Slurm's layouts.
#include <stdlib.h>
#include <time.h>

#include <gtest/gtest.h>

#include "cmds/format.h"
#include "common/error.h"

namespace cmds = fsched::cmds;
using nlohmann::json;

namespace {

// The job of docs/scheduler.md (gid 0 so that its group name is known everywhere).
json doc_job() {
  return json::parse(R"({"job_id": 12, "name": "test", "user": "alice", "uid": 1000, "gid": 0,
 "partition": "debug", "state": "RUNNING", "reason": "None",
 "submit_time": 1763700000, "start_time": 1763700001, "end_time": 0,
 "run_time": 135, "time_limit": 0, "nodes": "node1", "num_nodes": 1,
 "cpus_per_task": 1, "ntasks": 1, "num_cpus": 1, "mem_mb": 0,
 "work_dir": "/home/alice", "stdout": "/home/alice/slurm-12.out", "stderr": "/home/alice/slurm-12.out",
 "command": "/var/spool/fschedd/job12/slurm_script", "argv": [],
 "checkpoint_interval": 300, "checkpoint_dir": "/var/lib/fsched/checkpoint/12",
 "requeue": true, "hold": false, "restarts": 0, "job_version": 1,
 "exit_code": "0:0", "last_checkpoint": {"checkpoint_id": 3, "time": 1763700300.5, "status": "Present"}})");
}

json job(int64_t id, std::string state, std::string reason = "None", std::string nodes = "") {
  json j = doc_job();
  j["job_id"] = id;
  j["state"] = state;
  j["reason"] = reason;
  j["nodes"] = nodes;
  return j;
}

json doc_checkpoint() {
  return json::parse(R"({"checkpoint_id": 3, "job_id": 12, "description": "periodic",
 "trigger_time": 1763700300.1, "completion_time": 1763700300.9, "duration": 0.84,
 "status": "Present", "reason": "", "source": "periodic", "job_version": 1,
 "location": "/var/lib/fsched/checkpoint/12/3", "size": 12897485,
 "freeze_ms": 41.6})");
}

std::vector<std::string> lines(const std::string& text) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start < text.size()) {
    size_t nl = text.find('\n', start);
    out.push_back(text.substr(start, nl - start));
    start = nl == std::string::npos ? text.size() : nl + 1;
  }
  return out;
}

bool has_line(const std::string& text, const std::string& line) {
  for (const auto& l : lines(text))
    if (l == line) return true;
  return false;
}

class Utc : public ::testing::Test {
 protected:
  void SetUp() override {
    ::setenv("TZ", "UTC", 1);
    ::tzset();
  }
  void TearDown() override {
    ::unsetenv("TZ");
    ::tzset();
  }
};

}  // namespace

TEST(States, ShortCodes) {
  EXPECT_EQ(cmds::state_code("PENDING"), "PD");
  EXPECT_EQ(cmds::state_code("RUNNING"), "R");
  EXPECT_EQ(cmds::state_code("COMPLETING"), "CG");
  EXPECT_EQ(cmds::state_code("COMPLETED"), "CD");
  EXPECT_EQ(cmds::state_code("FAILED"), "F");
  EXPECT_EQ(cmds::state_code("CANCELLED"), "CA");
  EXPECT_EQ(cmds::state_code("TIMEOUT"), "TO");
  EXPECT_EQ(cmds::state_code("NODE_FAIL"), "NF");
  EXPECT_EQ(cmds::state_code("WEIRD"), "WEIRD");
}

TEST(States, ParsedFromLongOrShortNames) {
  EXPECT_EQ(cmds::parse_job_state("pd"), "PENDING");
  EXPECT_EQ(cmds::parse_job_state("Running"), "RUNNING");
  EXPECT_EQ(cmds::parse_job_state("CG"), "COMPLETING");
  EXPECT_EQ(cmds::parse_job_state("nf"), "NODE_FAIL");
  EXPECT_EQ(cmds::parse_job_state("all"), "ALL");
  EXPECT_THROW(cmds::parse_job_state("DONE"), fsched::Error);
  EXPECT_THROW(cmds::parse_job_state(""), fsched::Error);
}

TEST(Pieces, ScontrolDuration) {
  EXPECT_EQ(cmds::scontrol_duration(0), "00:00:00");
  EXPECT_EQ(cmds::scontrol_duration(300), "00:05:00");
  EXPECT_EQ(cmds::scontrol_duration(135), "00:02:15");
  EXPECT_EQ(cmds::scontrol_duration(36000), "10:00:00");
  EXPECT_EQ(cmds::scontrol_duration(93784), "1-02:03:04");
  EXPECT_EQ(cmds::scontrol_duration(-1), "UNLIMITED");
}

TEST(Pieces, HumanSize) {
  EXPECT_EQ(cmds::human_size(0), "0B");
  EXPECT_EQ(cmds::human_size(512), "512B");
  EXPECT_EQ(cmds::human_size(1024), "1.0K");
  EXPECT_EQ(cmds::human_size(123456), "120.6K");
  EXPECT_EQ(cmds::human_size(12.3 * 1048576), "12.3M");
  EXPECT_EQ(cmds::human_size(1.5 * 1073741824), "1.5G");
  EXPECT_EQ(cmds::human_size(2.0 * 1099511627776), "2.0T");
}

TEST(Pieces, CompressHostlist) {
  using V = std::vector<std::string>;
  EXPECT_EQ(cmds::compress_hostlist(V{}), "");
  EXPECT_EQ(cmds::compress_hostlist(V{"node1"}), "node1");
  EXPECT_EQ(cmds::compress_hostlist(V{"node1", "node2"}), "node[1-2]");
  EXPECT_EQ(cmds::compress_hostlist(V{"node3", "node1", "node2", "gpu7"}), "node[1-3],gpu7");
  EXPECT_EQ(cmds::compress_hostlist(V{"node1", "node3", "node4", "node9"}), "node[1,3-4,9]");
  EXPECT_EQ(cmds::compress_hostlist(V{"n01", "n02", "n10"}), "n[01-02,10]");
  EXPECT_EQ(cmds::compress_hostlist(V{"login", "node1", "node1"}), "login,node1");
  EXPECT_EQ(cmds::compress_hostlist(V{"a1b2", "a1b3"}), "a1b[2-3]");
}

TEST(SqueueFormat, Parse) {
  auto items = cmds::parse_squeue_format("id=%.18i %8j|%T%%");
  ASSERT_EQ(items.size(), 4u);
  EXPECT_EQ(items[0].spec, 0);
  EXPECT_EQ(items[0].suffix, "id=");
  EXPECT_EQ(items[1].spec, 'i');
  EXPECT_EQ(items[1].width, 18);
  EXPECT_TRUE(items[1].right);
  EXPECT_EQ(items[1].suffix, " ");
  EXPECT_EQ(items[2].spec, 'j');
  EXPECT_EQ(items[2].width, 8);
  EXPECT_FALSE(items[2].right);
  EXPECT_EQ(items[2].suffix, "|");
  EXPECT_EQ(items[3].spec, 'T');
  EXPECT_EQ(items[3].width, 0);
  EXPECT_EQ(items[3].suffix, "%");
}

TEST(SqueueFormat, UnknownSpecifierIsAnError) {
  EXPECT_THROW(cmds::parse_squeue_format("%i %y"), fsched::Error);
  EXPECT_THROW(cmds::parse_squeue_format("%i %.10"), fsched::Error);
  try {
    cmds::parse_squeue_format("%Q");
  } catch (const fsched::Error& e) {
    EXPECT_NE(std::string(e.what()).find("%Q"), std::string::npos) << e.what();
  }
}

TEST(Squeue, DefaultTable) {
  std::vector<json> jobs = {job(12, "RUNNING", "None", "node1"), job(13, "PENDING", "Resources")};
  jobs[1]["name"] = "averyverylongname";
  jobs[1]["run_time"] = 0;
  std::string t = cmds::squeue_table(jobs, cmds::kSqueueDefaultFormat);
  auto l = lines(t);
  ASSERT_EQ(l.size(), 3u) << t;
  EXPECT_EQ(l[0],
            "             JOBID PARTITION     NAME     USER ST       TIME  NODES NODELIST(REASON)");
  EXPECT_EQ(l[1], "                12     debug     test    alice  R       2:15      1 node1");
  EXPECT_EQ(l[2],
            "                13     debug averyver    alice PD       0:00      1 (Resources)");
  EXPECT_EQ(cmds::squeue_table(jobs, cmds::kSqueueDefaultFormat, false),
            t.substr(t.find('\n') + 1));
}

TEST(Squeue, WidthsJustifyAndTruncate) {
  std::vector<json> jobs = {job(7, "COMPLETED", "None", "node2")};
  jobs[0]["time_limit"] = 3600;
  jobs[0]["run_time"] = 600;
  EXPECT_EQ(cmds::squeue_table(jobs, "%5i|%.5i|%2T|%T|%l|%L|%N|%R|%r|%U|%u|%C"),
            "JOBID|JOBID|ST|STATE|TIME_LIMIT|TIME_LEFT|NODELIST|NODELIST(REASON)|REASON|UID|USER|"
            "CPUS\n"
            "7    |    7|CO|COMPLETED|1:00:00|50:00|node2|node2|None|1000|alice|1\n");
  EXPECT_EQ(cmds::squeue_table(jobs, "%t %M %l", false), "CD 10:00 1:00:00\n");
}

TEST(Squeue, UnlimitedAndTimesAndNone) {
  ::setenv("TZ", "UTC", 1);
  ::tzset();
  json j = job(5, "PENDING");
  j["run_time"] = 0;
  j["start_time"] = 0;
  EXPECT_EQ(cmds::squeue_table(std::vector<json>{j}, "%l %L %R %V %S %e %m %c %D", false),
            "UNLIMITED UNLIMITED (None) 2025-11-21T04:40:00 N/A N/A 0 1 1\n");
  ::unsetenv("TZ");
  ::tzset();
}

TEST(Squeue, DefaultFilterHidesFinishedJobs) {
  cmds::JobFilter none;
  for (std::string s : {"PENDING", "RUNNING", "COMPLETING"})
    EXPECT_TRUE(cmds::job_selected(job(1, s), none)) << s;
  for (std::string s : {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL"})
    EXPECT_FALSE(cmds::job_selected(job(1, s), none)) << s;
}

TEST(Squeue, JobIdShowsAFinishedJob) {
  cmds::JobFilter f;
  f.job_ids = {1, 3};
  EXPECT_TRUE(cmds::job_selected(job(1, "COMPLETED"), f));
  EXPECT_TRUE(cmds::job_selected(job(3, "RUNNING"), f));
  EXPECT_FALSE(cmds::job_selected(job(2, "RUNNING"), f));
  f.states = {"RUNNING"};
  EXPECT_FALSE(cmds::job_selected(job(1, "COMPLETED"), f));
  EXPECT_TRUE(cmds::job_selected(job(3, "RUNNING"), f));
}

TEST(Squeue, StateUserAndPartitionFilters) {
  cmds::JobFilter f;
  f.states = {"COMPLETED", "FAILED"};
  EXPECT_TRUE(cmds::job_selected(job(1, "COMPLETED"), f));
  EXPECT_TRUE(cmds::job_selected(job(1, "FAILED"), f));
  EXPECT_FALSE(cmds::job_selected(job(1, "RUNNING"), f));
  f.states = {"ALL"};
  EXPECT_TRUE(cmds::job_selected(job(1, "CANCELLED"), f));

  cmds::JobFilter u;
  u.uids = {1000};
  EXPECT_TRUE(cmds::job_selected(job(1, "RUNNING"), u));
  u.uids = {0};
  EXPECT_FALSE(cmds::job_selected(job(1, "RUNNING"), u));

  cmds::JobFilter p;
  p.partitions = {"batch"};
  EXPECT_FALSE(cmds::job_selected(job(1, "RUNNING"), p));
  p.partitions = {"batch", "debug"};
  EXPECT_TRUE(cmds::job_selected(job(1, "RUNNING"), p));
}

TEST_F(Utc, ShowJobLayout) {
  std::string t = cmds::show_job(doc_job());
  auto l = lines(t);
  ASSERT_GE(l.size(), 10u);
  EXPECT_EQ(l[0], "JobId=12 JobName=test");
  EXPECT_EQ(l[1], "   UserId=alice(1000) GroupId=root(0)");
  EXPECT_EQ(l[2], "   JobState=RUNNING Reason=None");
  EXPECT_TRUE(has_line(t, "   Requeue=1 Restarts=0 JobVersion=1 BatchFlag=1 ExitCode=0:0")) << t;
  EXPECT_TRUE(has_line(t, "   RunTime=00:02:15 TimeLimit=UNLIMITED")) << t;
  EXPECT_TRUE(has_line(
      t, "   SubmitTime=2025-11-21T04:40:00 StartTime=2025-11-21T04:40:01 EndTime=Unknown"))
      << t;
  EXPECT_TRUE(has_line(t, "   Partition=debug NodeList=node1 BatchHost=node1")) << t;
  EXPECT_TRUE(has_line(t, "   NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 MinMemoryNode=0")) << t;
  EXPECT_TRUE(has_line(t, "   Command=/var/spool/fschedd/job12/slurm_script")) << t;
  EXPECT_TRUE(has_line(t, "   WorkDir=/home/alice")) << t;
  EXPECT_TRUE(has_line(t, "   StdErr=/home/alice/slurm-12.out")) << t;
  EXPECT_TRUE(has_line(t, "   StdOut=/home/alice/slurm-12.out")) << t;
  EXPECT_TRUE(has_line(t, "   Checkpoint=00:05:00 CheckpointDir=/var/lib/fsched/checkpoint/12"))
      << t;
  EXPECT_TRUE(has_line(t,
                       "   LastCheckpoint=3 LastCheckpointTime=2025-11-21T04:45:00 "
                       "LastCheckpointStatus=Present"))
      << t;
  EXPECT_EQ(t.substr(t.size() - 2), "\n\n");  // a blank line between jobs, as Slurm
}

TEST_F(Utc, ShowJobWithoutCheckpointsPendingHeld) {
  json j = doc_job();
  j["state"] = "PENDING";
  j["reason"] = "JobHeldUser";
  j["nodes"] = "";
  j["checkpoint_interval"] = 0;
  j["last_checkpoint"] = nullptr;
  j["requeue"] = false;
  j["restarts"] = 2;
  j["job_version"] = 3;
  j["time_limit"] = 5400;
  j["stderr"] = "";
  j["mem_mb"] = 2048;
  j["exit_code"] = "1:0";
  std::string t = cmds::show_job(j);
  EXPECT_TRUE(has_line(t, "   JobState=PENDING Reason=JobHeldUser")) << t;
  EXPECT_TRUE(has_line(t, "   Requeue=0 Restarts=2 JobVersion=3 BatchFlag=1 ExitCode=1:0")) << t;
  EXPECT_TRUE(has_line(t, "   RunTime=00:02:15 TimeLimit=01:30:00")) << t;
  EXPECT_TRUE(has_line(t, "   Partition=debug NodeList=(null) BatchHost=(null)")) << t;
  EXPECT_TRUE(has_line(t, "   NumNodes=1 NumCPUs=1 NumTasks=1 CPUs/Task=1 MinMemoryNode=2048M"))
      << t;
  EXPECT_TRUE(has_line(t, "   StdErr=/home/alice/slurm-12.out")) << t;  // with stdout
  EXPECT_TRUE(has_line(t, "   Checkpoint=NONE CheckpointDir=/var/lib/fsched/checkpoint/12")) << t;
  EXPECT_TRUE(has_line(t, "   LastCheckpoint=NONE LastCheckpointTime=N/A LastCheckpointStatus=N/A"))
      << t;
  EXPECT_EQ(t.find("Event="), std::string::npos) << t;  // no history, no line
}

TEST_F(Utc, ShowJobHistory) {
  json j = doc_job();
  j["history"] = {"2025-11-21T04:50:00 run 1 on node1 ends NODE_FAIL: node node1 DOWN",
                  "2025-11-21T04:50:00 restored from checkpoint 3 on node2"};
  std::string t = cmds::show_job(j);
  auto l = lines(t);
  ASSERT_GE(l.size(), 3u);  // the last is the blank line between jobs
  EXPECT_EQ(l[l.size() - 3],
            "   Event=2025-11-21T04:50:00 run 1 on node1 ends NODE_FAIL: node node1 DOWN")
      << t;
  EXPECT_EQ(l[l.size() - 2], "   Event=2025-11-21T04:50:00 restored from checkpoint 3 on node2")
      << t;
}

TEST_F(Utc, ShowNode) {
  json n = json::parse(R"({"name": "node1", "state": "IDLE", "reason": "", "addr": "127.0.0.1",
    "port": 6818, "cpus": 2, "alloc_cpus": 1, "real_memory": 4000, "alloc_memory": 100,
    "free_memory": 3500, "load": 0.125, "partitions": ["debug", "batch"],
    "last_heartbeat": 1763700000})");
  std::string t = cmds::show_node(n);
  EXPECT_EQ(lines(t)[0], "NodeName=node1");
  EXPECT_TRUE(has_line(t, "   CPUAlloc=1 CPUTot=2 CPULoad=0.12")) << t;
  EXPECT_TRUE(has_line(t, "   NodeAddr=127.0.0.1 NodeHostName=node1 Port=6818")) << t;
  EXPECT_TRUE(has_line(t, "   RealMemory=4000 AllocMem=100 FreeMem=3500")) << t;
  EXPECT_TRUE(has_line(t, "   State=IDLE")) << t;
  EXPECT_TRUE(has_line(t, "   Partitions=debug,batch")) << t;
  EXPECT_TRUE(has_line(t, "   LastHeartbeat=2025-11-21T04:40:00")) << t;
  EXPECT_EQ(t.find("Reason="), std::string::npos) << t;
  n["state"] = "DOWN";
  n["reason"] = "Not responding";
  EXPECT_TRUE(has_line(cmds::show_node(n), "   Reason=Not responding"));
}

// Node failure (issue 12): Slurm's NOT_RESPONDING flag and "[user@time]" after a reason.
TEST_F(Utc, ShowNodeNotRespondingAndDown) {
  json n = json::parse(R"({"name": "node1", "state": "IDLE", "reason": "", "not_responding": true,
    "partitions": ["debug"], "last_heartbeat": 1763700000})");
  std::string t = cmds::show_node(n);
  EXPECT_TRUE(has_line(t, "   State=IDLE+NOT_RESPONDING")) << t;
  EXPECT_EQ(t.find("Reason="), std::string::npos) << t;
  n["state"] = "DOWN";
  n["reason"] = "Not responding";
  n["down_time"] = 1795953600;  // 2026-11-29T12:00:00Z
  t = cmds::show_node(n);
  EXPECT_TRUE(has_line(t, "   State=DOWN+NOT_RESPONDING")) << t;
  EXPECT_TRUE(has_line(t, "   Reason=Not responding [root@2026-11-29T12:00:00]")) << t;
  // An admin's DOWN of a node that still answers: no flag, the admin's name and time.
  n["not_responding"] = false;
  n["reason"] = "disk replaced";
  n["reason_uid"] = 0;
  n["reason_time"] = 1795957200;
  t = cmds::show_node(n);
  EXPECT_TRUE(has_line(t, "   State=DOWN")) << t;
  EXPECT_TRUE(has_line(t, "   Reason=disk replaced [root@2026-11-29T13:00:00]")) << t;
  n["reason_user"] = "slurm";
  EXPECT_TRUE(has_line(cmds::show_node(n), "   Reason=disk replaced [slurm@2026-11-29T13:00:00]"));
}

// Node drain (issue 15): the drain's reason with who and when, and the jobs it leaves.
TEST_F(Utc, ShowNodeDraining) {
  json n = json::parse(R"({"name": "node1", "state": "DRAINING", "reason": "kernel update",
    "reason_user": "root", "reason_time": 1795953600, "partitions": ["debug"],
    "last_heartbeat": 1795953600,
    "drain_blocked": [{"job_id": 7, "why": "checkpoint 2 Failed: unsupported failure: x"}]})");
  std::string t = cmds::show_node(n);
  EXPECT_TRUE(has_line(t, "   State=DRAINING")) << t;
  EXPECT_TRUE(has_line(t, "   Reason=kernel update [root@2026-11-29T12:00:00]")) << t;
  EXPECT_TRUE(has_line(t, "   DrainBlocked=JobId=7 (checkpoint 2 Failed: unsupported failure: x)"))
      << t;
}

TEST(Show, Partition) {
  json p = json::parse(R"({"name": "debug", "nodes": ["node1", "node2"], "default": true,
    "state": "UP", "max_time": 0, "total_cpus": 4, "total_nodes": 2})");
  std::string t = cmds::show_partition(p);
  EXPECT_EQ(lines(t)[0], "PartitionName=debug");
  EXPECT_TRUE(has_line(t, "   AllocNodes=ALL Default=YES")) << t;
  EXPECT_TRUE(has_line(t, "   MaxNodes=1 MaxTime=UNLIMITED")) << t;
  EXPECT_TRUE(has_line(t, "   Nodes=node[1-2]")) << t;
  EXPECT_TRUE(has_line(t, "   State=UP TotalCPUs=4 TotalNodes=2")) << t;
  p["default"] = false;
  p["max_time"] = 86400 + 3600;
  t = cmds::show_partition(p);
  EXPECT_TRUE(has_line(t, "   AllocNodes=ALL Default=NO")) << t;
  EXPECT_TRUE(has_line(t, "   MaxNodes=1 MaxTime=1-01:00:00")) << t;
}

TEST_F(Utc, CheckpointTable) {
  json creating = doc_checkpoint();
  creating["checkpoint_id"] = 4;
  creating["description"] = "before upgrade";
  creating["source"] = "manual";
  creating["status"] = "Creating";
  creating["completion_time"] = 0;
  creating["duration"] = 0;
  creating["size"] = 0;
  creating["kind"] = "incremental";
  creating["parent_id"] = 3;
  std::vector<json> cs = {doc_checkpoint(), creating};
  auto l = lines(cmds::checkpoint_table(cs));
  ASSERT_EQ(l.size(), 3u);
  EXPECT_EQ(l[0],
            "ID  DESCRIPTION     TRIGGER_TIME         COMPLETION_TIME      DURATION  STATUS    "
            "SOURCE    VERSION  LOCATION                          SIZE  KIND         PARENT  "
            "FREEZE  CHAIN_SIZE  REASON");
  EXPECT_EQ(l[1],
            " 3  periodic        2025-11-21T04:45:00  2025-11-21T04:45:00     0.84s  Present   "
            "periodic        1  /var/lib/fsched/checkpoint/12/3  12.3M  full              -    "
            "42ms       12.3M  -");
  EXPECT_EQ(l[2],
            " 4  before upgrade  2025-11-21T04:45:00  Unknown                     -  Creating  "
            "manual          1  /var/lib/fsched/checkpoint/12/3      -  incremental       3       "
            "-           -  -");
  EXPECT_EQ(cmds::checkpoint_table({}),
            "ID  DESCRIPTION  TRIGGER_TIME  COMPLETION_TIME  DURATION  STATUS  SOURCE  VERSION  "
            "LOCATION  SIZE  KIND  PARENT  FREEZE  CHAIN_SIZE  REASON\n");
}

// The reason of a Failed, Timeout or Skipped checkpoint is in the table, not only in
// --json: it is what the user needs to act on.
TEST_F(Utc, CheckpointTableShowsReasons) {
  json failed = doc_checkpoint();
  failed["status"] = "Failed";
  failed["reason"] = "process 42 uses a TCP socket";
  json skipped = doc_checkpoint();
  skipped["checkpoint_id"] = 4;
  skipped["status"] = "Skipped";
  skipped["reason"] = "load-aware: node node1: CPU utilization 0.97 > CRIU_LoadThresholdCPU 0.90";
  std::vector<json> cs = {failed, skipped};
  auto l = lines(cmds::checkpoint_table(cs));
  ASSERT_EQ(l.size(), 3u);
  EXPECT_TRUE(l[0].ends_with("SIZE  REASON")) << l[0];
  EXPECT_TRUE(l[1].ends_with("  -  process 42 uses a TCP socket")) << l[1];
  EXPECT_TRUE(l[2].ends_with(
      "  -  load-aware: node node1: CPU utilization 0.97 > CRIU_LoadThresholdCPU 0.90"))
      << l[2];
}

TEST(Checkpoint, Summary) {
  EXPECT_EQ(cmds::checkpoint_summary(doc_checkpoint()),
            "Checkpoint 3 of job 12 is Present: /var/lib/fsched/checkpoint/12/3 (12.3M in 0.84s)");
  json failed = doc_checkpoint();
  failed["status"] = "Failed";
  failed["reason"] = "process 42 uses a TCP socket";
  EXPECT_EQ(cmds::checkpoint_summary(failed),
            "Checkpoint 3 of job 12 is Failed: process 42 uses a TCP socket");
  json cleared = doc_checkpoint();
  cleared["status"] = "Cleared";
  EXPECT_EQ(cmds::checkpoint_summary(cleared),
            "Checkpoint 3 of job 12 is Cleared: /var/lib/fsched/checkpoint/12/3");
}

// Slurm marks a node that does not respond with '*' after its state, in both layouts;
// a DOWN node that answers (set DOWN by an admin) has none.
TEST(Sinfo, NotRespondingNodesGetAStar) {
  std::vector<json> parts = {json::parse(
      R"({"name": "debug", "nodes": ["node1", "node2", "node3", "node4"], "default": true,
          "state": "UP", "max_time": 0})")};
  std::vector<json> nodes = {
      json::parse(R"({"name": "node1", "state": "IDLE", "not_responding": true})"),
      json::parse(R"({"name": "node2", "state": "ALLOCATED", "not_responding": true})"),
      json::parse(R"({"name": "node3", "state": "DOWN", "not_responding": true})"),
      json::parse(R"({"name": "node4", "state": "DOWN", "not_responding": false})"),
  };
  EXPECT_EQ(cmds::sinfo_table(parts, nodes),
            "PARTITION AVAIL  TIMELIMIT  NODES  STATE NODELIST\n"
            "debug*       up   infinite      1  idle* node1\n"
            "debug*       up   infinite      1 alloc* node2\n"
            "debug*       up   infinite      1  down* node3\n"
            "debug*       up   infinite      1   down node4\n");
  EXPECT_EQ(cmds::sinfo_node_table(parts, nodes),
            "NODELIST  NODES PARTITION STATE\n"
            "node1         1 debug*    idle*\n"
            "node2         1 debug*    alloc*\n"
            "node3         1 debug*    down*\n"
            "node4         1 debug*    down\n");
  EXPECT_EQ(cmds::sinfo_node_state(json::parse(R"({"state": "MIXED"})")), "mix");
}

// sinfo -R: one row per (reason, user, time), the nodes as a host list.
TEST_F(Utc, SinfoReasons) {
  std::vector<json> nodes = {
      json::parse(R"({"name": "node1", "state": "DOWN", "reason": "Not responding",
                      "not_responding": true, "down_time": 1795953600})"),
      json::parse(R"({"name": "node2", "state": "IDLE", "reason": ""})"),
      json::parse(R"({"name": "node3", "state": "DOWN", "reason": "Not responding",
                      "not_responding": true, "down_time": 1795953600})"),
      json::parse(R"({"name": "node4", "state": "DOWN", "reason": "bad disk", "reason_uid": 0,
                      "reason_time": 1795957200})"),
  };
  EXPECT_EQ(cmds::sinfo_reasons_table(nodes),
            "REASON                                             USER      TIMESTAMP           "
            "NODELIST\n"
            "Not responding                                     root      2026-11-29T12:00:00 "
            "node[1,3]\n"
            "bad disk                                           root      2026-11-29T13:00:00 "
            "node4\n");
  std::vector<json> healthy = {json::parse(R"({"name": "node2", "state": "IDLE"})")};
  EXPECT_EQ(cmds::sinfo_reasons_table(healthy),
            "REASON                                             USER      TIMESTAMP           "
            "NODELIST\n");
}

TEST(ScontrolUpdate, NodeRequests) {
  std::vector<std::string> down = {"NodeName=node[1-2]", "State=down", "Reason=disk bad"};
  auto r = cmds::node_update_requests(down);
  ASSERT_EQ(r.size(), 2u);
  EXPECT_EQ(r[0].first, "node1");
  EXPECT_EQ(r[1].first, "node2");
  EXPECT_EQ(r[0].second, (json{{"state", "DOWN"}, {"reason", "disk bad"}}));
  std::vector<std::string> drain = {"NodeName=node4", "State=drain", "Reason=kernel update"};
  r = cmds::node_update_requests(drain);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].second, (json{{"state", "DRAIN"}, {"reason", "kernel update"}}));
  std::vector<std::string> undrain = {"NodeName=node4", "State=UNDRAIN"};
  EXPECT_EQ(cmds::node_update_requests(undrain)[0].second, (json{{"state", "UNDRAIN"}}));
  std::vector<std::string> resume = {"nodename=node3", "STATE=Resume"};
  r = cmds::node_update_requests(resume);
  ASSERT_EQ(r.size(), 1u);
  EXPECT_EQ(r[0].first, "node3");
  EXPECT_EQ(r[0].second, (json{{"state", "RESUME"}}));
}

TEST(ScontrolUpdate, SlurmsErrors) {
  auto error_of = [](std::vector<std::string> words) -> std::string {
    try {
      cmds::node_update_requests(words);
    } catch (const fsched::Error& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_EQ(error_of({"NodeName=node1", "State=DOWN"}),
            "You must specify a reason when DOWNING or DRAINING a node. Request denied");
  EXPECT_EQ(error_of({"NodeName=node1", "State=DOWN", "Reason="}),
            "You must specify a reason when DOWNING or DRAINING a node. Request denied");
  EXPECT_EQ(error_of({"NodeName=node1", "State=DRAIN"}),
            "You must specify a reason when DOWNING or DRAINING a node. Request denied");
  EXPECT_EQ(error_of({"NodeName=node1", "State=IDLE", "Reason=x"}),
            "Invalid node state specified: IDLE (expected DOWN, DRAIN, UNDRAIN or RESUME)");
  EXPECT_EQ(error_of({"State=RESUME"}), "update needs NodeName=NODES (only nodes can be updated)");
  EXPECT_EQ(error_of({"NodeName=node1"}), "update needs State=DOWN, DRAIN, UNDRAIN or RESUME");
  EXPECT_EQ(error_of({"JobId=3", "TimeLimit=5"}),
            "Invalid input: JobId=3 (update takes NodeName=NODES State=DOWN|DRAIN|UNDRAIN|RESUME "
            "[Reason=TEXT])");
  EXPECT_EQ(error_of({"NodeName=n[3-1]", "State=RESUME"}).rfind("host list 'n[3-1]'", 0), 0u);
}

TEST(Sinfo, DefaultTable) {
  std::vector<json> parts = {
      json::parse(R"({"name": "debug", "nodes": ["node1", "node2", "node3"], "default": true,
                      "state": "UP", "max_time": 0})"),
      json::parse(R"({"name": "long", "nodes": ["node3"], "default": false, "state": "DOWN",
                      "max_time": 1800})"),
      json::parse(R"({"name": "empty", "nodes": [], "state": "UP", "max_time": 0})"),
  };
  std::vector<json> nodes = {
      json::parse(R"({"name": "node1", "state": "IDLE"})"),
      json::parse(R"({"name": "node2", "state": "IDLE"})"),
      json::parse(R"({"name": "node3", "state": "MIXED"})"),
  };
  EXPECT_EQ(cmds::sinfo_table(parts, nodes),
            "PARTITION AVAIL  TIMELIMIT  NODES  STATE NODELIST\n"
            "debug*       up   infinite      2   idle node[1-2]\n"
            "debug*       up   infinite      1    mix node3\n"
            "long       down      30:00      1    mix node3\n"
            "empty        up   infinite      0    n/a\n");
  EXPECT_EQ(cmds::sinfo_node_table(parts, nodes),
            "NODELIST  NODES PARTITION STATE\n"
            "node1         1 debug*    idle\n"
            "node2         1 debug*    idle\n"
            "node3         1 debug*    mix\n"
            "node3         1 long      mix\n");
}

TEST(Sinfo, States) {
  EXPECT_EQ(cmds::sinfo_state("IDLE"), "idle");
  EXPECT_EQ(cmds::sinfo_state("MIXED"), "mix");
  EXPECT_EQ(cmds::sinfo_state("ALLOCATED"), "alloc");
  EXPECT_EQ(cmds::sinfo_state("DOWN"), "down");
  EXPECT_EQ(cmds::sinfo_state("UNKNOWN"), "unk");
  EXPECT_EQ(cmds::sinfo_state("DRAINING"), "drng");
  EXPECT_EQ(cmds::sinfo_state("DRAINED"), "drain");
}

// A restore that fails falls back to the newest older Present checkpoint: the message
// says so rather than promising the newest one only.
TEST(Checkpoint, RestartMessageNamesTheFallback) {
  auto ck = [](int id, const char* status) {
    json c = doc_checkpoint();
    c["checkpoint_id"] = id;
    c["status"] = status;
    return c;
  };
  std::vector<json> cs = {ck(1, "Present"), ck(2, "Present"), ck(3, "Failed"), ck(4, "Present")};
  EXPECT_EQ(cmds::restart_message(12, json{{"restore_from", 4}}, cs),
            "Job 12 restarting from checkpoint 4, or from checkpoint 2 should its restore fail");
  EXPECT_EQ(cmds::restart_message(12, json{{"restore_from", 1}}, cs),
            "Job 12 restarting from checkpoint 1");
  EXPECT_EQ(cmds::restart_message(12, json{{"restore_from", 4}}, {}),
            "Job 12 restarting from checkpoint 4");
  EXPECT_EQ(cmds::restart_message(12, json::object(), cs), "Job 12 restarting");
}
