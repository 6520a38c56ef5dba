// scontrol suspend / resume: a "suspend" checkpoint stops the job and releases its CPUs
// and memory (SUSPENDED); resume restores it on any node with room, and a restore that
// fails falls back as a restart's does. Two fake nodes.
#include "controller_fixture.h"

namespace fsched::ctld {
namespace {

using A = ControllerTestAccess;

class Suspend : public Recovery {
 protected:
  json suspend(int64_t id, uid_t uid = 0) {
    proto::Request r = root({std::to_string(id)}, json::object());
    r.caller.uid = uid;
    return A::suspend(*ctld, r);
  }
  json resume(int64_t id, uid_t uid = 0) {
    proto::Request r = root({std::to_string(id)}, json::object());
    r.caller.uid = uid;
    return A::resume(*ctld, r);
  }
  json running_again(int64_t id) {
    return wait_job(id, [](const json& x) {
      return x["state"] == "RUNNING" && x["restore_from"] == 0 && x["restarts"].get<int>() > 0;
    });
  }
};

TEST_F(Suspend, ReleasesTheNodeAndResumeRestoresOnAnother) {
  int64_t id = job_on_n1({{"cpus_per_task", 4}});
  json c = suspend(id);
  EXPECT_EQ(c["source"], "suspend");
  EXPECT_EQ(c["status"], "Present");
  auto calls = node->of("/v1/node/checkpoint");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].body["leave_running"], false);
  json j = job(id);
  EXPECT_EQ(j["state"], "SUSPENDED") << j.dump();
  EXPECT_EQ(j["restore_from"], c["checkpoint_id"]);
  EXPECT_EQ(node_info("n1")["alloc_cpus"], 0) << "its CPUs are released";
  EXPECT_TRUE(has(j["history"], "suspended on n1 (checkpoint 1)")) << j["history"].dump();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(job(id)["state"], "SUSPENDED") << "a suspended job is not scheduled";
  // Another job takes n1; the resumed one goes to n2.
  int64_t other = submit({{"cpus_per_task", 4}});
  ASSERT_EQ(wait_job(other, [](const json& x) { return x["state"] == "RUNNING"; })["nodes"], "n1");
  json after = resume(id);
  EXPECT_EQ(after["state"], "PENDING");
  j = running_again(id);
  ASSERT_EQ(j["state"], "RUNNING") << j.dump();
  EXPECT_EQ(j["nodes"], "n2");
  EXPECT_EQ(j["restarts"], 1);
  auto restores = node->of("/v1/node/restore");
  ASSERT_EQ(restores.size(), 1u);
  EXPECT_EQ(restores[0].node, "n2");
  EXPECT_EQ(restores[0].body["restore_dir"], c["location"]);
  EXPECT_TRUE(has(j["history"], "resumed by root: to be restored from checkpoint 1"))
      << j["history"].dump();
  EXPECT_TRUE(has(j["history"], "restored from checkpoint 1 on n2")) << j["history"].dump();
}

TEST_F(Suspend, TwiceInARow) {
  int64_t id = job_on_n1();
  for (int round = 1; round <= 2; ++round) {
    json c = suspend(id);
    EXPECT_EQ(c["checkpoint_id"], round);
    EXPECT_EQ(job(id)["state"], "SUSPENDED");
    resume(id);
    json j = wait_job(id, [&](const json& x) {
      return x["state"] == "RUNNING" && x["restore_from"] == 0 && x["restarts"] == round;
    });
    ASSERT_EQ(j["restarts"], round) << j.dump();
    EXPECT_EQ(node->of("/v1/node/restore").back().body["restore_dir"], c["location"]);
  }
  json cks = checkpoints(id);
  ASSERT_EQ(cks.size(), 2u);
  EXPECT_EQ(cks[0]["source"], "suspend");
  EXPECT_EQ(cks[1]["source"], "suspend");
}

TEST_F(Suspend, AFailedDumpLeavesTheJobRunningAndSaysWhy) {
  int64_t id = job_on_n1();
  node->answer = [](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/checkpoint")
      throw proto::RpcError(500, "dump failed: /ckpt: No space left on device",
                            fsched::FailureClass::kTransient);
    return json{{"pid", 1}};
  };
  try {
    suspend(id);
    FAIL() << "suspended although its dump failed";
  } catch (const proto::RpcError& e) {
    EXPECT_EQ(e.status(), 500);
    std::string what = e.what();
    EXPECT_NE(what.find("No space left on device"), std::string::npos) << what;
    EXPECT_NE(what.find("it keeps running"), std::string::npos) << what;
  }
  json j = job(id);
  EXPECT_EQ(j["state"], "RUNNING");
  EXPECT_EQ(j["nodes"], "n1");
  EXPECT_EQ(node_info("n1")["alloc_cpus"], 1);
}

TEST_F(Suspend, ResumeOfABadImageFallsBackToTheOlderCheckpoint) {
  int64_t id = job_on_n1();
  json older = checkpoint(std::to_string(id), CheckpointSource::Manual);
  json c = suspend(id);
  std::string bad = c["location"];
  node->answer = [bad](const FakeNode::Call& call) -> json {
    if (call.path == "/v1/node/restore" && call.body["restore_dir"] == bad)
      throw proto::RpcError(422, "restore failed: pages.img: xxh3 checksum mismatch",
                            fsched::FailureClass::kImage);
    return json{{"pid", 1}};
  };
  resume(id);
  json j = running_again(id);
  ASSERT_EQ(j["state"], "RUNNING") << j.dump();
  auto restores = node->of("/v1/node/restore");
  ASSERT_EQ(restores.size(), 2u);
  EXPECT_EQ(restores[1].body["restore_dir"], older["location"]);
  json cks = checkpoints(id);
  EXPECT_EQ(cks[1]["status"], "Failed");
  EXPECT_TRUE(has(j["history"], "falling back to checkpoint 1")) << j["history"].dump();
}

TEST_F(Suspend, RefusedWhereItMakesNoSense) {
  int64_t id = job_on_n1();
  EXPECT_EQ(status_of([&] { suspend(id, 1000); }), 403) << "someone else's job";
  EXPECT_EQ(status_of([&] { resume(id); }), 409) << "not suspended";
  EXPECT_EQ(status_of([&] { suspend(999); }), 404);
  EXPECT_TRUE(node->of("/v1/node/checkpoint").empty());
  suspend(id);
  EXPECT_EQ(status_of([&] { suspend(id); }), 409) << "already suspended";
  EXPECT_EQ(status_of([&] { resume(id, 1000); }), 403);
  EXPECT_EQ(status_of([&] { A::restart(*ctld, root({std::to_string(id)}, json::object())); }), 409);
  EXPECT_EQ(job(id)["state"], "SUSPENDED");
  A::cancel(*ctld, root({std::to_string(id)}, json::object()));
  json j = job(id);
  EXPECT_EQ(j["state"], "CANCELLED") << j.dump();
  EXPECT_EQ(checkpoints(id)[0]["status"], "Present") << "its checkpoint stays, for a restart";
}

// Slurm's suspend (in_place): the node freezes the run where it is; it keeps its CPUs,
// its time does not count, resume thaws it there, and a cancel thaws it before SIGTERM.
TEST_F(Suspend, InPlaceFreezesTheRunWhereItIsAndResumeThawsIt) {
  int64_t id = job_on_n1();
  proto::Request r = root({std::to_string(id)}, {{"in_place", true}});
  json j = A::suspend(*ctld, r);
  EXPECT_EQ(j["state"], "SUSPENDED") << j.dump();
  EXPECT_EQ(j["suspended_in_place"], true);
  EXPECT_TRUE(node->of("/v1/node/checkpoint").empty()) << "no checkpoint in place";
  auto calls = node->of("/v1/node/suspend");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].node, "n1");
  EXPECT_EQ(calls[0].body["stop"], true);
  EXPECT_EQ(calls[0].body["generation"], 1);
  EXPECT_EQ(node_info("n1")["alloc_cpus"], 1) << "its CPUs stay allocated";
  // Its run stays current on n1: the heartbeats do not have it killed.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  EXPECT_TRUE(beat("n1")["stale"].empty());
  EXPECT_EQ(job(id)["state"], "SUSPENDED");
  EXPECT_EQ(status_of([&] { checkpoint(std::to_string(id), CheckpointSource::Manual); }), 409);
  double run_before = job(id)["run_time"].get<double>();
  j = resume(id);
  EXPECT_EQ(j["state"], "RUNNING") << j.dump();
  EXPECT_EQ(j["nodes"], "n1");
  EXPECT_EQ(j["suspended_in_place"], false);
  EXPECT_LE(j["run_time"].get<double>(), run_before + 1) << "the time suspended is not run time";
  calls = node->of("/v1/node/suspend");
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].body["stop"], false);
  EXPECT_TRUE(has(j["history"], "suspended in place on n1 by root")) << j["history"].dump();
  EXPECT_TRUE(has(j["history"], "resumed in place on n1 by root")) << j["history"].dump();
  EXPECT_EQ(j["restarts"], 0);

  // Suspended in place again, then cancelled: thawed first, then SIGTERM.
  A::suspend(*ctld, r);
  A::cancel(*ctld, root({std::to_string(id)}, json::object()));
  ASSERT_TRUE(eventually([&] { return !node->of("/v1/node/signal").empty(); }));
  calls = node->of("/v1/node/suspend");
  ASSERT_EQ(calls.size(), 4u);
  EXPECT_EQ(calls[3].body["stop"], false);
  EXPECT_EQ(node->of("/v1/node/signal")[0].body["signal"], SIGTERM);
  ended(id, 143);
  EXPECT_EQ(job(id)["state"], "CANCELLED");
}

TEST_F(Suspend, InPlaceRefusedByTheNodeChangesNothing) {
  int64_t id = job_on_n1();
  node->answer = [](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/suspend" && c.body["stop"] == true)
      throw proto::RpcError(409, "job 1: an operation on it is under way on n1");
    return json{{"pid", 1}};
  };
  proto::Request r = root({std::to_string(id)}, {{"in_place", true}});
  EXPECT_EQ(status_of([&] { A::suspend(*ctld, r); }), 409);
  json j = job(id);
  EXPECT_EQ(j["state"], "RUNNING");
  auto calls = node->of("/v1/node/suspend");
  ASSERT_EQ(calls.size(), 2u) << "a thaw follows a failed suspend, in case it froze";
  EXPECT_EQ(calls[1].body["stop"], false);
}

}  // namespace
}  // namespace fsched::ctld
