// Node drain (scontrol update NodeName=X State=DRAIN): the controller vacates the jobs
// with checkpointing from the node with "node drain" checkpoints and restores them on
// another node, leaves the others running until they end, keeps DRAINING until the node
// is empty (then DRAINED), and RESUME/UNDRAIN return it to service. Two fake nodes.
#include "controller_fixture.h"

namespace fsched::ctld {
namespace {

using A = ControllerTestAccess;

class Drain : public Recovery {
 protected:
  json update(const std::string& n, json body, uid_t uid = 0) {
    proto::Request r = root({n}, std::move(body));
    r.caller.uid = uid;
    return A::update_node(*ctld, r);
  }
  // Jobs placed on n1 while n2 is still silent, then n2 up; nodes answer dumps and
  // restores. `extras`: one submit body each.
  std::vector<int64_t> jobs_on_n1(const std::vector<json>& extras) {
    std::vector<int64_t> ids;
    for (auto& e : extras) ids.push_back(submit(e));
    for (auto id : ids) {
      json j = wait_job(id, [&](const json& x) { return x["state"] == "RUNNING"; });
      EXPECT_EQ(j["nodes"], "n1") << j.dump();
    }
    EXPECT_TRUE(eventually([&] { return node->of("/v1/node/launch").size() == ids.size(); }));
    set_alive({"n1", "n2"});
    node->answer = [](const FakeNode::Call& c) -> json {
      if (c.path == "/v1/node/checkpoint") return dumped(c);
      return json{{"pid", 1}};
    };
    EXPECT_TRUE(eventually([&] { return node_info("n2")["state"] == "IDLE"; }));
    return ids;
  }
  json checkpoint_calls_of(int64_t id) {
    json out = json::array();
    for (auto& c : node->of("/v1/node/checkpoint"))
      if (c.body["job_id"] == id) out.push_back(c.body);
    return out;
  }
};

const json kCkpt = {{"checkpoint_interval", 3600}};

TEST_F(Drain, MovesTheJobsWithCheckpointingAndLeavesTheOthersUntilTheyEnd) {
  auto ids = jobs_on_n1({kCkpt, kCkpt, json::object()});
  int64_t a = ids[0], b = ids[1], plain = ids[2];
  update("n1", {{"state", "DRAIN"}, {"reason", "kernel update"}});
  json n1 = node_info("n1");
  EXPECT_EQ(n1["state"], "DRAINING") << n1.dump();
  EXPECT_EQ(n1["reason"], "kernel update");
  EXPECT_EQ(n1["reason_user"], "root");
  EXPECT_GT(n1["reason_time"].get<double>(), 0);

  for (int64_t id : {a, b}) {
    json j = wait_job(id, [&](const json& x) {
      return x["state"] == "RUNNING" && x["nodes"] == "n2" && x["restore_from"] == 0;
    });
    ASSERT_EQ(j["nodes"], "n2") << j.dump();
    EXPECT_EQ(j["restarts"], 1);
    json cks = checkpoints(id);
    ASSERT_EQ(cks.size(), 1u) << cks.dump();
    EXPECT_EQ(cks[0]["source"], "node drain");
    EXPECT_EQ(cks[0]["status"], "Present");
    json calls = checkpoint_calls_of(id);
    ASSERT_EQ(calls.size(), 1u);
    EXPECT_EQ(calls[0]["leave_running"], false) << "a drain stops the job once dumped";
    bool restored_on_n2 = false;
    for (auto& r : node->of("/v1/node/restore"))
      if (r.body["job_id"] == id) {
        EXPECT_EQ(r.node, "n2");
        EXPECT_EQ(r.body["restore_dir"], cks[0]["location"]);
        restored_on_n2 = true;
      }
    EXPECT_TRUE(restored_on_n2);
    EXPECT_TRUE(has(j["history"], "vacated from n1 by its drain (checkpoint 1)"))
        << j["history"].dump();
    EXPECT_TRUE(has(j["history"], "restored from checkpoint 1 on n2")) << j["history"].dump();
  }
  // Without checkpointing it runs on where it is, and the node stays DRAINING.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  json p = job(plain);
  EXPECT_EQ(p["state"], "RUNNING");
  EXPECT_EQ(p["nodes"], "n1");
  EXPECT_TRUE(checkpoints(plain).empty());
  EXPECT_EQ(node_info("n1")["state"], "DRAINING");
  // No new job lands on a draining node.
  int64_t fresh = submit();
  EXPECT_EQ(wait_job(fresh, [](const json& x) { return x["state"] == "RUNNING"; })["nodes"], "n2");

  {
    std::lock_guard l(node->mu);
    node->runs["n1"].erase(plain);
  }
  A::job_ended(*ctld, root({}, {{"job_id", plain},
                                {"exit_status", 0},
                                {"name", "n1"},
                                {"generation", job(plain)["generation"]}}));
  EXPECT_EQ(job(plain)["state"], "COMPLETED");
  EXPECT_EQ(node_info("n1")["state"], "DRAINED");

  update("n1", {{"state", "RESUME"}});
  n1 = node_info("n1");
  EXPECT_EQ(n1["state"], "IDLE") << n1.dump();
  EXPECT_EQ(n1["reason"], "");
  // Back in service: the least loaded node, n1, takes the next job.
  int64_t next = submit();
  EXPECT_EQ(wait_job(next, [](const json& x) { return x["state"] == "RUNNING"; })["nodes"], "n1");
}

TEST_F(Drain, WithNoRoomElsewhereTheJobWaitsPendingThenMoves) {
  // Each job takes a whole node: n2 is full until its job ends.
  json whole = {{"checkpoint_interval", 3600}, {"cpus_per_task", 4}};
  auto ids = jobs_on_n1({whole});
  int64_t a = ids[0];
  int64_t other = submit({{"cpus_per_task", 4}});
  ASSERT_EQ(wait_job(other, [](const json& x) { return x["state"] == "RUNNING"; })["nodes"], "n2");
  update("n1", {{"state", "DRAIN"}, {"reason", "fan"}});
  json j = wait_job(a, [](const json& x) { return x["state"] == "PENDING"; });
  ASSERT_EQ(j["state"], "PENDING") << j.dump();
  j = wait_job(a, [](const json& x) { return x["reason"] == "Resources"; });
  EXPECT_EQ(j["reason"], "Resources") << j.dump();
  EXPECT_GT(j["restore_from"].get<int64_t>(), 0);
  EXPECT_EQ(node_info("n1")["state"], "DRAINED");
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(job(a)["state"], "PENDING") << "placed on the drained node";

  {
    std::lock_guard l(node->mu);
    node->runs["n2"].erase(other);
  }
  A::job_ended(*ctld, root({}, {{"job_id", other},
                                {"exit_status", 0},
                                {"name", "n2"},
                                {"generation", job(other)["generation"]}}));
  j = wait_job(a, [](const json& x) { return x["state"] == "RUNNING" && x["restore_from"] == 0; });
  EXPECT_EQ(j["nodes"], "n2") << j.dump();
  EXPECT_EQ(j["restarts"], 1);
}

TEST_F(Drain, AJobWhoseDumpIsUnsupportedKeepsRunningAndTheNodeSaysWhy) {
  auto ids = jobs_on_n1({kCkpt});
  int64_t a = ids[0];
  node->answer = [](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/checkpoint")
      throw proto::RpcError(422, "dump refused: fd 5: a perf_event fd cannot be restored",
                            fsched::FailureClass::kUnsupported);
    return json{{"pid", 1}};
  };
  update("n1", {{"state", "DRAIN"}, {"reason", "maint"}});
  ASSERT_TRUE(eventually([&] { return !node_info("n1")["drain_blocked"].empty(); }));
  json n1 = node_info("n1");
  ASSERT_EQ(n1["drain_blocked"].size(), 1u) << n1.dump();
  EXPECT_EQ(n1["drain_blocked"][0]["job_id"], a);
  EXPECT_NE(n1["drain_blocked"][0]["why"].get<std::string>().find("perf_event"), std::string::npos)
      << n1.dump();
  EXPECT_EQ(n1["state"], "DRAINING");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  json j = job(a);
  EXPECT_EQ(j["state"], "RUNNING");
  EXPECT_EQ(j["nodes"], "n1");
  EXPECT_EQ(checkpoint_calls_of(a).size(), 1u) << "an unsupported dump is not tried again";
  EXPECT_TRUE(has(j["history"], "drain of n1: checkpoint 1 Failed")) << j["history"].dump();
  // A new DRAIN gives it another chance; now it dumps and moves.
  node->answer = [](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/checkpoint") return dumped(c);
    return json{{"pid", 1}};
  };
  update("n1", {{"state", "DRAIN"}, {"reason", "maint, again"}});
  j = wait_job(a, [](const json& x) { return x["state"] == "RUNNING" && x["nodes"] == "n2"; });
  EXPECT_EQ(j["nodes"], "n2") << j.dump();
}

TEST_F(Drain, BadRequestsChangeNothing) {
  set_alive({"n1", "n2"});
  EXPECT_EQ(status_of([&] { update("n1", {{"state", "DRAIN"}, {"reason", "x"}}, 1000); }), 403);
  EXPECT_EQ(status_of([&] { update("n1", {{"state", "DRAIN"}}); }), 400) << "DRAIN needs a reason";
  EXPECT_EQ(status_of([&] { update("n1", {{"state", "DRAIN"}, {"reason", "  "}}); }), 400);
  EXPECT_EQ(status_of([&] { update("n9", {{"state", "DRAIN"}, {"reason", "x"}}); }), 404);
  EXPECT_EQ(status_of([&] { update("n1", {{"state", "UNDRAIN"}}); }), 409) << "not drained";
  EXPECT_EQ(status_of([&] { update("n1", {{"state", "RESUME"}}); }), 409);
  json n1 = node_info("n1");
  EXPECT_EQ(n1["state"], "IDLE") << n1.dump();
  EXPECT_EQ(n1["drain"], false);
}

TEST_F(Drain, DrainOutlivesAControllerRestartAndUndrainEndsIt) {
  set_alive({"n1", "n2"});
  update("n2", {{"state", "DRAIN"}, {"reason", "bad disk"}}, 0);
  rebuild(std::chrono::milliseconds(0), {"n1", "n2"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  json n2 = node_info("n2");
  EXPECT_EQ(n2["state"], "DRAINED") << n2.dump();
  EXPECT_EQ(n2["reason"], "bad disk");
  EXPECT_EQ(n2["reason_user"], "root");
  // DOWN on top of DRAIN shows DOWN's reason; RESUME ends both.
  update("n2", {{"state", "DOWN"}, {"reason", "power"}});
  EXPECT_EQ(node_info("n2")["reason"], "power");
  update("n2", {{"state", "RESUME"}});
  EXPECT_EQ(node_info("n2")["state"], "IDLE");
  update("n2", {{"state", "DRAIN"}, {"reason", "again"}});
  update("n2", {{"state", "UNDRAIN"}});
  n2 = node_info("n2");
  EXPECT_EQ(n2["state"], "IDLE") << n2.dump();
  EXPECT_EQ(n2["drain"], false);
}

}  // namespace
}  // namespace fsched::ctld
