// Preemption (PreemptType = preempt/partition_prio): a job pending for resources in the
// "high" partition (PriorityTier 10) stops a running job of "low" (PriorityTier 1) as
// PreemptMode says, takes its node, and the preempted job comes back once room returns.
// Two fake nodes of 4 CPUs, both partitions on both.
#include "controller_fixture.h"

namespace fsched::ctld {
namespace {

using A = ControllerTestAccess;

class Preempt : public Recovery {
 protected:
  std::string mode = "CHECKPOINT";
  std::string exempt = "-1";

  void SetUp() override {
    two_nodes_conf =
        "PreemptType = preempt/partition_prio\n"
        "PreemptMode = " +
        mode + "\nPreemptExemptTime = " + exempt +
        "\n"
        "NodeName=n1 CPUs=4 RealMemory=8000\n"
        "NodeName=n2 CPUs=4 RealMemory=8000\n"
        "PartitionName=low Nodes=n1,n2 Default=YES PriorityTier=1\n"
        "PartitionName=high Nodes=n1,n2 PriorityTier=10\n";
    Recovery::SetUp();
    set_alive({"n1", "n2"});
    node->answer = [](const FakeNode::Call& c) -> json {
      if (c.path == "/v1/node/checkpoint") return dumped(c);
      return json{{"pid", 1}};
    };
    EXPECT_TRUE(eventually([&] { return node_info("n2")["state"] == "IDLE"; }));
  }
  // Both nodes full with a 4-CPU job of `part` each; their ids.
  std::pair<int64_t, int64_t> fill(const std::string& part = "low") {
    int64_t a = submit({{"partition", part}, {"cpus_per_task", 4}});
    int64_t b = submit({{"partition", part}, {"cpus_per_task", 4}});
    for (int64_t id : {a, b})
      EXPECT_EQ(wait_job(id, [](const json& x) { return x["state"] == "RUNNING"; })["state"],
                "RUNNING");
    EXPECT_TRUE(eventually([&] { return node->of("/v1/node/launch").size() == 2; }));
    return {a, b};
  }
  void end(int64_t id) {
    json j = job(id);
    std::string n = j["nodes"];
    {
      std::lock_guard l(node->mu);
      node->runs[n].erase(id);
    }
    A::job_ended(
        *ctld,
        root({},
             {{"job_id", id}, {"exit_status", 0}, {"name", n}, {"generation", j["generation"]}}));
  }
  int64_t submit_high() { return submit({{"partition", "high"}, {"cpus_per_task", 4}}); }
};

TEST_F(Preempt, CheckpointModeStopsALowTierJobAndRestoresItAfterwards) {
  auto [a, b] = fill();
  int64_t h = submit_high();
  json hj = wait_job(h, [](const json& x) { return x["state"] == "RUNNING"; });
  ASSERT_EQ(hj["state"], "RUNNING") << hj.dump();
  auto calls = node->of("/v1/node/checkpoint");
  ASSERT_EQ(calls.size(), 1u) << "one low-tier job frees the 4 CPUs needed";
  int64_t victim = calls[0].body["job_id"], other = victim == a ? b : a;
  EXPECT_EQ(calls[0].body["leave_running"], false);
  json v = job(victim);
  EXPECT_EQ(v["state"], "PENDING") << v.dump();
  EXPECT_EQ(hj["nodes"], job(other)["nodes"] == "n1" ? "n2" : "n1");
  EXPECT_EQ(job(other)["state"], "RUNNING");
  json cks = checkpoints(victim);
  ASSERT_EQ(cks.size(), 1u);
  EXPECT_EQ(cks[0]["source"], "preemption");
  EXPECT_EQ(cks[0]["description"], "preempted by job " + std::to_string(h));
  EXPECT_TRUE(has(v["history"], "preempted by job " + std::to_string(h))) << v["history"].dump();
  EXPECT_TRUE(has(hj["history"], "preempting job(s) " + std::to_string(victim)))
      << hj["history"].dump();
  // No room while the high-tier job runs: the victim waits, and is not preempted back.
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(job(victim)["state"], "PENDING");
  EXPECT_EQ(job(h)["state"], "RUNNING");
  EXPECT_EQ(node->of("/v1/node/checkpoint").size(), 1u);

  end(h);
  v = wait_job(victim, [](const json& x) {
    return x["state"] == "RUNNING" && x["restore_from"] == 0 && x["restarts"] == 1;
  });
  ASSERT_EQ(v["state"], "RUNNING") << v.dump();
  EXPECT_EQ(v["nodes"], hj["nodes"]);
  auto restores = node->of("/v1/node/restore");
  ASSERT_EQ(restores.size(), 1u);
  EXPECT_EQ(restores[0].body["restore_dir"], cks[0]["location"]);
}

TEST_F(Preempt, SameOrLowerTierDoesNotPreempt) {
  fill("high");
  int64_t low = submit({{"partition", "low"}, {"cpus_per_task", 4}});
  int64_t high = submit_high();
  std::this_thread::sleep_for(std::chrono::milliseconds(600));
  EXPECT_EQ(job(low)["state"], "PENDING");
  EXPECT_EQ(job(high)["state"], "PENDING");
  EXPECT_EQ(job(high)["reason"], "Resources");
  EXPECT_TRUE(node->of("/v1/node/checkpoint").empty());
  EXPECT_TRUE(node->of("/v1/node/signal").empty());
}

class PreemptRequeue : public Preempt {
 protected:
  void SetUp() override {
    mode = "REQUEUE";
    Preempt::SetUp();
  }
};

TEST_F(PreemptRequeue, TheVictimIsRequeuedFromScratch) {
  auto [a, b] = fill();
  int64_t h = submit_high();
  ASSERT_TRUE(eventually([&] { return !node->of("/v1/node/signal").empty(); }));
  auto sig = node->of("/v1/node/signal");
  int64_t victim = sig[0].body["job_id"];
  EXPECT_TRUE(victim == a || victim == b);
  EXPECT_EQ(sig[0].body["signal"], SIGTERM);
  EXPECT_TRUE(node->of("/v1/node/checkpoint").empty()) << "REQUEUE takes no checkpoint";
  end(victim);  // the node reports the run ended
  json hj = wait_job(h, [](const json& x) { return x["state"] == "RUNNING"; });
  EXPECT_EQ(hj["state"], "RUNNING") << hj.dump();
  json v = job(victim);
  EXPECT_EQ(v["state"], "PENDING") << v.dump();
  EXPECT_EQ(v["restore_from"], 0);
  EXPECT_EQ(v["restarts"], 1);
  EXPECT_TRUE(has(v["history"], "(REQUEUE): requeued from scratch")) << v["history"].dump();
}

TEST_F(Preempt, AFailedCheckpointFallsBackToRequeueOrCancel) {
  int64_t a = submit({{"partition", "low"}, {"cpus_per_task", 4}, {"requeue", false}});
  int64_t b = submit({{"partition", "low"}, {"cpus_per_task", 4}, {"requeue", false}});
  for (int64_t id : {a, b}) wait_job(id, [](const json& x) { return x["state"] == "RUNNING"; });
  node->answer = [](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/checkpoint")
      throw proto::RpcError(422, "dump refused: a perf_event fd", FailureClass::kUnsupported);
    return json{{"pid", 1}};
  };
  int64_t h = submit_high();
  ASSERT_TRUE(eventually([&] { return !node->of("/v1/node/signal").empty(); }));
  int64_t victim = node->of("/v1/node/signal")[0].body["job_id"];
  end(victim);
  json v = wait_job(victim, [](const json& x) { return x["state"] == "CANCELLED"; });
  EXPECT_EQ(v["state"], "CANCELLED") << "--no-requeue: cancelled, as Slurm's REQUEUE does";
  EXPECT_TRUE(has(v["history"], "as its checkpoint failed")) << v["history"].dump();
  EXPECT_EQ(wait_job(h, [](const json& x) { return x["state"] == "RUNNING"; })["state"], "RUNNING");
}

class PreemptSuspend : public Preempt {
 protected:
  void SetUp() override {
    mode = "SUSPEND,GANG";
    Preempt::SetUp();
  }
};

TEST_F(PreemptSuspend, TheVictimIsFrozenInPlaceAndThawedOnceItsCpusAreFree) {
  auto [a, b] = fill();
  int64_t h = submit_high();
  json hj = wait_job(h, [](const json& x) { return x["state"] == "RUNNING"; });
  ASSERT_EQ(hj["state"], "RUNNING") << hj.dump();
  auto calls = node->of("/v1/node/suspend");
  ASSERT_EQ(calls.size(), 1u);
  EXPECT_EQ(calls[0].body["stop"], true);
  int64_t victim = calls[0].body["job_id"];
  EXPECT_TRUE(victim == a || victim == b);
  EXPECT_TRUE(node->of("/v1/node/checkpoint").empty());
  json v = job(victim);
  EXPECT_EQ(v["state"], "SUSPENDED") << v.dump();
  EXPECT_EQ(v["suspended_by"], h);
  EXPECT_EQ(hj["nodes"], v["nodes"]) << "the preemptor runs on the victim's node, in its CPUs";
  EXPECT_EQ(node_info(hj["nodes"])["alloc_cpus"], 4);
  EXPECT_TRUE(has(v["history"], "preempted by job " + std::to_string(h) + " (SUSPEND)"))
      << v["history"].dump();
  // Only the preemption resumes it.
  proto::Request r = root({std::to_string(victim)}, json::object());
  try {
    A::resume(*ctld, r);
    ADD_FAILURE() << "a user resumed a job suspended by a preemption";
  } catch (const proto::RpcError& e) {
    EXPECT_EQ(e.status(), 409);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(400));
  EXPECT_EQ(job(victim)["state"], "SUSPENDED");

  end(h);
  v = wait_job(victim, [](const json& x) { return x["state"] == "RUNNING"; });
  ASSERT_EQ(v["state"], "RUNNING") << v.dump();
  EXPECT_EQ(v["nodes"], hj["nodes"]);
  EXPECT_EQ(v["restarts"], 0) << "thawed, not restored";
  EXPECT_EQ(v["suspended_by"], 0);
  calls = node->of("/v1/node/suspend");
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_EQ(calls[1].body["stop"], false);
  EXPECT_EQ(node_info(v["nodes"])["alloc_cpus"], 4);
  EXPECT_TRUE(node->of("/v1/node/restore").empty());
}

class PreemptExempt : public Preempt {
 protected:
  void SetUp() override {
    exempt = "0:30";  // 30 s
    Preempt::SetUp();
  }
};

TEST_F(PreemptExempt, AJobThatJustStartedIsNotPreempted) {
  fill();
  int64_t h = submit_high();
  std::this_thread::sleep_for(std::chrono::milliseconds(800));
  EXPECT_EQ(job(h)["state"], "PENDING");
  EXPECT_TRUE(node->of("/v1/node/checkpoint").empty());
}

}  // namespace
}  // namespace fsched::ctld
