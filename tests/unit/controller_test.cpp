// The controller's job and checkpoint lifecycle, driven through its routes with a fake
// node in place of fschedd (NodeClient): placement and launch, launch failures and
// their retries, restore failure falling back to an older checkpoint, a dump's outcome
// arriving by the node's report, requeue, node failure and recovery. The fixtures are
// in controller_fixture.h.
#include "controller_fixture.h"

namespace fsched::ctld {
namespace {

using A = ControllerTestAccess;

TEST_F(ControllerTest, SubmittedJobIsPlacedAndLaunched) {
  int64_t id = submit();
  json j = wait_running(id);
  EXPECT_EQ(j["state"], "RUNNING") << j.dump();
  EXPECT_EQ(j["nodes"], "n1");
  EXPECT_GT(j["start_time"].get<double>(), 0);
  auto launches = node->of("/v1/node/launch");
  ASSERT_EQ(launches.size(), 1u);
  EXPECT_EQ(launches[0].node, "n1");
  EXPECT_EQ(launches[0].body["job_id"], id);
  EXPECT_EQ(launches[0].body["script"], "#!/bin/sh\nsleep 100\n");
  EXPECT_EQ(launches[0].body["env"]["SLURM_JOB_ID"], std::to_string(id));
  EXPECT_FALSE(launches[0].body.contains("restore_dir"));

  // It ends: COMPLETED, and it keeps its start time.
  ended(id, 0);
  j = job(id);
  EXPECT_EQ(j["state"], "COMPLETED");
  EXPECT_GT(j["start_time"].get<double>(), 0) << "a finished job keeps its start time";
}

TEST_F(ControllerTest, LaunchFailuresAreRetriedThenTheJobFails) {
  node->answer = [](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/launch")
      throw proto::RpcError(500, "launch of job on n1 failed: no such user");
    return json::object();
  };
  int64_t id = submit();
  json j = wait_job(id, [](const json& x) { return x["state"] == "FAILED"; });
  EXPECT_EQ(j["state"], "FAILED") << j.dump();
  EXPECT_EQ(j["reason"], "LaunchFailed");
  EXPECT_EQ(node->of("/v1/node/launch").size(), 3u) << "three tries, then it gives up";
}

TEST_F(ControllerTest, RestoreFailureFallsBackToAnOlderCheckpoint) {
  int64_t id = running_job_that_dumps();
  std::string sid = std::to_string(id);
  checkpoint(sid, CheckpointSource::Manual);
  checkpoint(sid, CheckpointSource::Manual);
  json vac = checkpoint(sid, CheckpointSource::Vacate);
  EXPECT_EQ(vac["status"], "Present");
  json j = job(id);
  ASSERT_EQ(j["state"], "PENDING");
  EXPECT_EQ(j["reason"], "Vacated");
  EXPECT_FALSE(node->of("/v1/node/checkpoint").back().body["leave_running"].get<bool>());

  // The newest image does not restore, for its image (fschedd's 422 with the class);
  // the one before it does.
  std::string bad = checkpoints(id)[2]["location"];
  node->answer = [bad](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/restore" && c.body["restore_dir"] == bad)
      throw proto::RpcError(422, "restore of job failed: pages.img: xxh3 checksum mismatch",
                            fsched::FailureClass::kImage);
    return json{{"pid", 2}};
  };
  json r = A::restart(*ctld, root({sid}, json::object()));
  EXPECT_EQ(r["restore_from"], 3);
  j = wait_job(id,
               [&](const json& x) { return x["state"] == "RUNNING" && x["restore_from"] == 0; });
  EXPECT_EQ(j["state"], "RUNNING") << j.dump();
  auto restores = node->of("/v1/node/restore");
  ASSERT_EQ(restores.size(), 2u);
  EXPECT_EQ(restores[0].body["restore_dir"], bad);
  EXPECT_EQ(restores[1].body["restore_dir"], checkpoints(id)[1]["location"]);
  json cks = checkpoints(id);
  EXPECT_EQ(cks[2]["status"], "Failed");
  EXPECT_NE(cks[2]["reason"].get<std::string>().find("checksum"), std::string::npos)
      << cks[2].dump();
  EXPECT_EQ(cks[1]["status"], "Present");
  EXPECT_EQ(j["restarts"], 1);
  EXPECT_EQ(j["job_version"], 2);
}

TEST_F(ControllerTest, RestartSkipsAnImageDeletedByHand) {
  int64_t id = running_job_that_dumps();
  std::string sid = std::to_string(id);
  checkpoint(sid, CheckpointSource::Manual);
  checkpoint(sid, CheckpointSource::Vacate);
  std::string gone = checkpoints(id)[1]["location"];
  std::filesystem::remove_all(gone);
  json r = A::restart(*ctld, root({sid}, json::object()));
  EXPECT_EQ(r["restore_from"], 1);
  json c = checkpoints(id)[1];
  EXPECT_EQ(c["status"], "Cleared");
  EXPECT_NE(c["reason"].get<std::string>().find(gone + " is missing"), std::string::npos)
      << c.dump();
}

TEST_F(ControllerTest, DumpOutcomeReportedByTheNodeSettlesTheCheckpoint) {
  int64_t id = submit();
  wait_running(id);
  // The connection breaks: the dump may have completed; the node will say.
  node->answer = [](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/checkpoint")
      throw fsched::Error("cannot reach 127.0.0.1:1: connection reset");
    return json::object();
  };
  std::string sid = std::to_string(id);
  auto pending =
      std::async(std::launch::async, [&] { return checkpoint(sid, CheckpointSource::Manual); });
  json cks;
  for (int i = 0; i < 250 && (cks = checkpoints(id)).empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  ASSERT_EQ(cks.size(), 1u);
  // Still waiting for the RPC or for the node: Creating.
  while (node->of("/v1/node/checkpoint").empty())
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(checkpoints(id)[0]["status"], "Creating");
  std::string loc = cks[0]["location"];
  A::op_done(*ctld, root({}, {{"job_id", id},
                              {"name", "n1"},
                              {"kind", "checkpoint"},
                              {"outcome", "ok"},
                              {"dir", loc},
                              {"size", 777},
                              {"freeze_ms", 2.0}}));
  ASSERT_EQ(pending.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  json c = pending.get();
  EXPECT_EQ(c["status"], "Present");
  EXPECT_EQ(c["size"], 777);
  // A second report of the same outcome changes nothing.
  A::op_done(*ctld, root({}, {{"job_id", id},
                              {"name", "n1"},
                              {"kind", "checkpoint"},
                              {"outcome", "failed"},
                              {"dir", loc},
                              {"error", "late"}}));
  EXPECT_EQ(checkpoints(id)[0]["status"], "Present");
}

TEST_F(ControllerTest, RequeueStartsTheJobAgainFromScratch) {
  int64_t id = submit();
  double first_start = wait_running(id)["start_time"];
  std::string sid = std::to_string(id);
  A::requeue(*ctld, root({sid}, json::object()));
  // The controller asks the node to stop it (SIGTERM, then SIGKILL after KillWait).
  for (int i = 0; i < 250 && node->of("/v1/node/signal").empty(); ++i)
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  // A requeue that came while the launch's answer was still on its way is signalled
  // again once the start is confirmed (LaunchInFlight.*): one SIGTERM, or two.
  auto sig = node->of("/v1/node/signal");
  ASSERT_GE(sig.size(), 1u);
  for (const auto& s : sig) {
    EXPECT_EQ(s.body["signal"], 15);
    EXPECT_GT(s.body["kill_wait"].get<int>(), 0);
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));  // a later start time
  ended(id, 128 + 15);
  json j = wait_job(id, [&](const json& x) {
    return x["state"] == "RUNNING" && node->of("/v1/node/launch").size() == 2;
  });
  EXPECT_EQ(j["state"], "RUNNING") << j.dump();
  EXPECT_EQ(j["restarts"], 1);
  EXPECT_EQ(j["job_version"], 2);
  EXPECT_GT(j["start_time"].get<double>(), first_start);
  EXPECT_FALSE(node->of("/v1/node/launch").back().body.contains("restore_dir"))
      << "requeue is not restore";
  ASSERT_FALSE(j["history"].empty());
  EXPECT_NE(j["history"][0].get<std::string>().find("Requeued (scontrol requeue) from scratch"),
            std::string::npos)
      << j["history"].dump();
}

// `scontrol checkpoint delete`: the record is Cleared at once, the image removed by a
// worker outside the controller's lock.
TEST_F(ControllerTest, DeletedCheckpointIsClearedAndItsImageRemoved) {
  int64_t id = running_job_that_dumps();
  std::string sid = std::to_string(id);
  checkpoint(sid, CheckpointSource::Manual);
  std::filesystem::path loc = checkpoints(id)[0]["location"].get<std::string>();
  ASSERT_TRUE(std::filesystem::is_directory(loc));
  std::filesystem::create_directories(loc / "sub");  // remove_all, not rmdir
  json c = A::delete_checkpoint(*ctld, root({sid, "1"}));
  EXPECT_EQ(c["status"], "Cleared");
  EXPECT_NE(c["reason"].get<std::string>().find("deleted by uid 0"), std::string::npos) << c.dump();
  EXPECT_TRUE(eventually([&] { return !std::filesystem::exists(loc); }))
      << loc << " is still there";
  EXPECT_EQ(checkpoints(id)[0]["status"], "Cleared");
}

// The launch RPC is still in flight (the job already runs on the node as far as the
// user can tell): a cancel's signal finds no job on the node and is sent again once the
// launch is confirmed; a checkpoint request waits for the confirmation instead of failing.
class LaunchInFlight : public ControllerTest {
 protected:
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::atomic<bool> launched{false};

  void SetUp() override {
    ControllerTest::SetUp();
    node->answer = [this](const FakeNode::Call& c) -> json {
      if (c.path == "/v1/node/launch") {
        released.wait();
        launched = true;
        return json{{"pid", 7}};
      }
      if (c.path == "/v1/node/signal" && !launched)
        throw proto::RpcError(409, "job 1 is not running on n1");
      if (c.path == "/v1/node/checkpoint") return dumped(c);
      return json::object();
    };
  }
  void TearDown() override {
    if (!launched) release.set_value();
    ControllerTest::TearDown();
  }
  int64_t submit_in_flight() {
    int64_t id = submit();
    wait_job(id, [&](const json& j) {
      return j["state"] == "RUNNING" && !node->of("/v1/node/launch").empty();
    });
    EXPECT_FALSE(launched);
    return id;
  }
};

TEST_F(LaunchInFlight, CancelSignalsAgainOnceTheStartIsConfirmed) {
  int64_t id = submit_in_flight();
  A::cancel(*ctld, root({std::to_string(id)}));
  eventually([&] { return !node->of("/v1/node/signal").empty(); });
  ASSERT_EQ(node->of("/v1/node/signal").size(), 1u) << "the cancel sent no signal";
  release.set_value();
  eventually([&] { return node->of("/v1/node/signal").size() >= 2; });
  auto sigs = node->of("/v1/node/signal");
  ASSERT_EQ(sigs.size(), 2u) << "the job was not signalled once its launch was confirmed";
  EXPECT_EQ(sigs[1].body["signal"], SIGTERM);
  EXPECT_GT(sigs[1].body["kill_wait"].get<int>(), 0) << sigs[1].body.dump();
}

TEST_F(LaunchInFlight, CheckpointWaitsForTheLaunchAnswer) {
  int64_t id = submit_in_flight();
  auto ck = std::async(std::launch::async, [&] {
    return A::checkpoint(*ctld, root({std::to_string(id)}, json::object()),
                         CheckpointSource::Manual);
  });
  EXPECT_EQ(ck.wait_for(std::chrono::milliseconds(300)), std::future_status::timeout)
      << "the checkpoint did not wait for the launch";
  release.set_value();
  json c = ck.get();
  EXPECT_EQ(c["status"], "Present") << c.dump();
}

TEST_F(LaunchInFlight, AnEndReportedBeforeTheStartIsConfirmedIsTakenOnceItIs) {
  // A job that exits at once: its node reports the end before the launch's answer
  // has been read. The report is refused so that the node sends it again, not lost.
  int64_t id = submit_in_flight();
  json body = {{"job_id", id}, {"exit_status", 0}, {"name", "n1"}};
  try {
    A::job_ended(*ctld, root({}, body));
    FAIL() << "an end reported while the start was in flight was taken or dropped";
  } catch (const proto::RpcError& e) {
    EXPECT_EQ(e.status(), 409) << e.what();
  }
  EXPECT_EQ(job(id)["state"], "RUNNING");
  release.set_value();
  ended(id, 0);
  EXPECT_EQ(job(id)["state"], "COMPLETED");
}

TEST_F(ControllerTest, LaunchCarriesTheRunsGeneration) {
  int64_t id = submit();
  json j = wait_running(id);
  EXPECT_EQ(j["generation"], 1);
  auto launches = node->of("/v1/node/launch");
  ASSERT_EQ(launches.size(), 1u);
  EXPECT_EQ(launches[0].body["generation"], 1);
  double issued = launches[0].body["issued"];
  EXPECT_NEAR(
      issued,
      std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(),
      10.0);
}

TEST_F(ControllerTest, RequeueOfAFinishedOrUnknownJobIsRefused) {
  int64_t id = submit();
  wait_running(id);
  ended(id, 0);
  ASSERT_EQ(job(id)["state"], "COMPLETED");
  try {
    A::requeue(*ctld, root({std::to_string(id)}, json::object()));
    FAIL() << "a finished job was requeued";
  } catch (const proto::RpcError& e) {
    EXPECT_EQ(e.status(), 409);
    EXPECT_NE(std::string(e.what()).find("already finished (COMPLETED)"), std::string::npos)
        << e.what();
  }
  EXPECT_EQ(job(id)["state"], "COMPLETED");
  try {
    A::requeue(*ctld, root({"999"}, json::object()));
    FAIL() << "an unknown job was requeued";
  } catch (const proto::RpcError& e) {
    EXPECT_EQ(e.status(), 404);
  }
}

TEST_F(Recovery, SilentNodeIsNotRespondingThenDownAndItsJobStartsOverElsewhere) {
  int64_t id = job_on_n1();
  set_alive({"n2"});
  auto t0 = std::chrono::steady_clock::now();  // n1's last heartbeat was at most 100 ms before
  ASSERT_TRUE(eventually([&] { return node_info("n1")["not_responding"] == true; }));
  EXPECT_GE(since(t0), 0.85);
  // NOT_RESPONDING: nothing moves yet.
  json n1 = node_info("n1");
  EXPECT_NE(n1["state"], "DOWN") << n1.dump();
  json j = job(id);
  EXPECT_EQ(j["state"], "RUNNING");
  EXPECT_EQ(j["nodes"], "n1");
  ASSERT_TRUE(eventually([&] { return node_info("n1")["state"] == "DOWN"; }));
  EXPECT_GE(since(t0), 1.85) << "DOWN before SlurmdTimeout + requeue_timeout";
  n1 = node_info("n1");
  EXPECT_EQ(n1["reason"], "Not responding");
  EXPECT_GT(n1["down_time"].get<double>(), 0);
  EXPECT_FALSE(n1["not_responding"].get<bool>()) << "DOWN replaces the flag";
  // No checkpoint: it starts over on n2, as a new run.
  j = wait_job(id, [&](const json& x) {
    return x["state"] == "RUNNING" && node->of("/v1/node/launch").size() == 2;
  });
  EXPECT_EQ(j["nodes"], "n2") << j.dump();
  EXPECT_EQ(j["restarts"], 1);
  EXPECT_EQ(j["generation"], 2);
  auto launches = node->of("/v1/node/launch");
  EXPECT_EQ(launches.back().node, "n2");
  EXPECT_EQ(launches.back().body["generation"], 2);
  EXPECT_TRUE(node->of("/v1/node/restore").empty());
  EXPECT_TRUE(has(j["history"], "NodeFail: run 1 on n1")) << j["history"].dump();
  EXPECT_TRUE(has(j["history"], "Requeued=NodeFail n1: no Present checkpoint, from scratch"))
      << j["history"].dump();
}

TEST_F(Recovery, DownNodesJobIsRestoredFromTheNewestCheckpointAndTheNodeRejoinsClean) {
  int64_t id = job_on_n1();
  std::string sid = std::to_string(id);
  checkpoint(sid, CheckpointSource::Manual);
  checkpoint(sid, CheckpointSource::Manual);
  set_alive({"n2"});
  json j = wait_job(id, [&](const json& x) {
    return x["state"] == "RUNNING" && x["restore_from"] == 0 &&
           !node->of("/v1/node/restore").empty();
  });
  ASSERT_EQ(j["state"], "RUNNING") << j.dump();
  EXPECT_EQ(j["nodes"], "n2");
  auto restores = node->of("/v1/node/restore");
  ASSERT_EQ(restores.size(), 1u);
  EXPECT_EQ(restores[0].node, "n2");
  EXPECT_EQ(restores[0].body["restore_dir"], checkpoints(id)[1]["location"]);
  EXPECT_EQ(restores[0].body["generation"], 2);
  EXPECT_EQ(j["restarts"], 1);
  EXPECT_TRUE(has(j["history"], "Requeued=NodeFail n1: to be restored from checkpoint 2"))
      << j["history"].dump();
  EXPECT_TRUE(has(j["history"], "restored from checkpoint 2 on n2")) << j["history"].dump();
  // n2 runs the current run: nothing of it is stale.
  EXPECT_TRUE(beat("n2")["stale"].empty());
  // n1 comes back, still holding the old run: it rejoins (ReturnToService = 1) and is
  // told to kill that run.
  json reply = beat("n1");
  EXPECT_EQ(reply["lease"], 1);
  ASSERT_EQ(reply["stale"].size(), 1u) << reply.dump();
  EXPECT_EQ(reply["stale"][0]["job_id"], id);
  EXPECT_EQ(reply["stale"][0]["generation"], 1);
  json n1 = node_info("n1");
  EXPECT_EQ(n1["state"], "IDLE") << n1.dump();
  EXPECT_EQ(n1["reason"], "");
  EXPECT_EQ(job(id)["nodes"], "n2") << "the old run's node does not get the job back";
}

TEST_F(Recovery, RunLostByARestartedNodeIsRestoredFromItsCheckpoint) {
  // n1 restarted (faster than SlurmdTimeout) and found the run's processes gone: it
  // reports the run lost. A node failure all the same: restored, not left NODE_FAIL.
  int64_t id = job_on_n1();
  checkpoint(std::to_string(id), CheckpointSource::Manual);
  set_alive({"n1", "n2"});
  A::job_ended(*ctld,
               root({}, {{"job_id", id}, {"exit_status", 0}, {"name", "n1"}, {"lost", true}}));
  json j = wait_job(id, [&](const json& x) {
    return x["state"] == "RUNNING" && x["restore_from"] == 0 &&
           !node->of("/v1/node/restore").empty();
  });
  ASSERT_EQ(j["state"], "RUNNING") << j.dump();
  auto restores = node->of("/v1/node/restore");
  ASSERT_EQ(restores.size(), 1u);
  EXPECT_EQ(restores[0].body["restore_dir"], checkpoints(id)[0]["location"]);
  EXPECT_EQ(j["restarts"], 1);
  EXPECT_TRUE(has(j["history"], "NodeFail: run 1 on n1: node n1 lost run 1"))
      << j["history"].dump();
}

TEST_F(Recovery, RestoreOfABadImageFallsBackToTheOlderOneThenToAStartFromScratch) {
  int64_t id = job_on_n1();
  std::string sid = std::to_string(id);
  checkpoint(sid, CheckpointSource::Manual);
  checkpoint(sid, CheckpointSource::Manual);
  node->answer = [](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/restore")
      throw proto::RpcError(422, "restore failed: pages.img: xxh3 checksum mismatch",
                            fsched::FailureClass::kImage);
    return json{{"pid", 3}};
  };
  set_alive({"n2"});
  json j = wait_job(id, [&](const json& x) {
    return x["state"] == "RUNNING" && node->of("/v1/node/launch").size() == 2;
  });
  ASSERT_EQ(j["state"], "RUNNING") << j.dump();
  EXPECT_EQ(j["nodes"], "n2");
  auto restores = node->of("/v1/node/restore");
  ASSERT_EQ(restores.size(), 2u);
  json cks = checkpoints(id);
  EXPECT_EQ(restores[0].body["restore_dir"], cks[1]["location"]);
  EXPECT_EQ(restores[1].body["restore_dir"], cks[0]["location"]);
  EXPECT_EQ(cks[0]["status"], "Failed");
  EXPECT_EQ(cks[1]["status"], "Failed");
  EXPECT_FALSE(node->of("/v1/node/launch").back().body.contains("restore_dir"));
  EXPECT_EQ(j["restarts"], 1);
  EXPECT_EQ(j["generation"], 4) << "launch, two restores, the start from scratch";
  EXPECT_TRUE(has(j["history"], "falling back to checkpoint 1")) << j["history"].dump();
  EXPECT_TRUE(has(j["history"], "no Present checkpoint left: from scratch")) << j["history"].dump();
}

TEST_F(Recovery, NoRequeueJobStaysNodeFail) {
  int64_t id = job_on_n1({{"requeue", false}});
  set_alive({"n2"});
  json j = wait_job(id, [](const json& x) { return x["state"] == "NODE_FAIL"; });
  ASSERT_EQ(j["state"], "NODE_FAIL") << j.dump();
  EXPECT_EQ(j["reason"], "NodeFail");
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(job(id)["state"], "NODE_FAIL");
  EXPECT_EQ(node->of("/v1/node/launch").size(), 1u);
}

TEST_F(Recovery, AdminDownKillsTheRunsAndRequeuesAndResumeReturnsTheNode) {
  int64_t id = job_on_n1();
  auto update = [&](const std::string& n, json body, uid_t uid = 0) {
    proto::Request r = root({n}, std::move(body));
    r.caller.uid = uid;
    return A::update_node(*ctld, r);
  };
  EXPECT_EQ(status_of([&] { update("n1", {{"state", "DOWN"}, {"reason", "x"}}, 1000); }), 403);
  EXPECT_EQ(status_of([&] { update("n1", {{"state", "DOWN"}}); }), 400) << "DOWN needs a reason";
  EXPECT_EQ(status_of([&] { update("n1", {{"state", "IDLE"}, {"reason", "x"}}); }), 400);
  EXPECT_EQ(status_of([&] { update("n9", {{"state", "DOWN"}, {"reason", "x"}}); }), 404);
  EXPECT_EQ(status_of([&] { update("n2", {{"state", "RESUME"}}); }), 409) << "n2 is not DOWN";
  EXPECT_EQ(job(id)["state"], "RUNNING");

  update("n1", {{"state", "DOWN"}, {"reason", "bad fan"}});
  json n1 = node_info("n1");
  EXPECT_EQ(n1["state"], "DOWN");
  EXPECT_EQ(n1["reason"], "bad fan");
  ASSERT_TRUE(eventually([&] { return !node->of("/v1/node/signal").empty(); }));
  auto sig = node->of("/v1/node/signal");
  EXPECT_EQ(sig[0].node, "n1");
  EXPECT_EQ(sig[0].body["signal"], SIGKILL);
  // The node has the run killed (its next report lacks it): the job is requeued on n2.
  json j = wait_job(id, [&](const json& x) {
    return x["state"] == "RUNNING" && node->of("/v1/node/launch").size() == 2;
  });
  EXPECT_EQ(j["nodes"], "n2") << j.dump();
  EXPECT_EQ(j["restarts"], 1);
  // n1 heartbeats all along, and stays DOWN until RESUME.
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_EQ(node_info("n1")["state"], "DOWN");
  update("n1", {{"state", "RESUME"}});
  n1 = node_info("n1");
  EXPECT_EQ(n1["state"], "IDLE") << n1.dump();
  EXPECT_EQ(n1["reason"], "");
}

// The case: `scontrol requeue` of a job whose node is gone answered 0 and left
// the job RUNNING. The node's DOWN now ends the run, and the job starts again from
// scratch (a requeue, not a restore).
TEST_F(Recovery, RequeueOfAJobOnASilentNodeStartsItAgainFromScratch) {
  int64_t id = job_on_n1();
  checkpoint(std::to_string(id), CheckpointSource::Manual);
  node->answer = [](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/signal" && c.node == "n1")
      throw fsched::Error("cannot reach n1: connection refused");
    return json{{"pid", 5}};
  };
  set_alive({"n2"});
  A::requeue(*ctld, root({std::to_string(id)}, json::object()));
  EXPECT_EQ(job(id)["state"], "RUNNING");
  json j = wait_job(id, [&](const json& x) {
    return x["state"] == "RUNNING" && node->of("/v1/node/launch").size() == 2;
  });
  EXPECT_EQ(j["nodes"], "n2") << j.dump();
  EXPECT_EQ(j["restarts"], 1);
  EXPECT_TRUE(node->of("/v1/node/restore").empty()) << "requeue is not restore";
  EXPECT_TRUE(has(j["history"], "Requeued (scontrol requeue) from scratch")) << j.dump();
}

TEST_F(Recovery, LaunchNotConfirmedWithinBatchStartTimeoutIsRetriedElsewhere) {
  set_alive({"n1", "n2"});
  ASSERT_TRUE(eventually([&] { return node_info("n2")["state"] == "IDLE"; }));
  std::promise<void> go;
  std::shared_future<void> gone = go.get_future().share();
  node->answer = [gone](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/launch" && c.node == "n1") gone.wait();  // no answer, no record
    return json{{"pid", 6}};
  };
  int64_t id = submit();
  json j = wait_job(id, [&](const json& x) {
    return x["state"] == "RUNNING" && x["nodes"] == "n2" && node->of("/v1/node/launch").size() == 2;
  });
  EXPECT_EQ(j["nodes"], "n2") << j.dump();
  EXPECT_EQ(j["generation"], 2);
  EXPECT_TRUE(has(j["history"], "BatchStartTimeout")) << j["history"].dump();
  auto launches = node->of("/v1/node/launch");
  EXPECT_EQ(launches[0].node, "n1");
  EXPECT_EQ(launches[1].node, "n2");
  // The late answer of the abandoned launch changes nothing, and its run is stale at n1.
  go.set_value();
  ASSERT_TRUE(eventually([&] {
    std::lock_guard l(node->mu);
    return node->runs["n1"].count(id) > 0;
  }));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  j = job(id);
  EXPECT_EQ(j["nodes"], "n2");
  EXPECT_EQ(j["state"], "RUNNING");
  json reply = beat("n1");
  ASSERT_EQ(reply["stale"].size(), 1u) << reply.dump();
  EXPECT_EQ(reply["stale"][0]["generation"], 1);
}

// A node cut off (no heartbeat) but not silent for SlurmdTimeout yet.
class CutOffNode : public Recovery {
 protected:
  CutOffNode() { slurmd_timeout = 60; }
};

TEST_F(CutOffNode, LaunchesItLosesAreNotCountedAgainstTheJobsAndNoMoreGoThere) {
  set_alive({"n1", "n2"});
  ASSERT_TRUE(eventually([&] { return node_info("n2")["state"] == "IDLE"; }));
  set_alive({"n2"});  // n1 no longer heard from; its launches get no answer
  std::promise<void> go;
  std::shared_future<void> gone = go.get_future().share();
  node->answer = [gone](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/launch" && c.node == "n1") gone.wait();
    return json{{"pid", 6}};
  };
  auto to_n1 = [&] {
    std::size_t n = 0;
    for (auto& c : node->of("/v1/node/launch")) n += c.node == "n1";
    return n;
  };
  auto running_on_n2 = [&](int64_t id) {
    json j =
        wait_job(id, [](const json& x) { return x["state"] == "RUNNING" && x["nodes"] == "n2"; });
    EXPECT_EQ(j["state"], "RUNNING") << j.dump();
    EXPECT_EQ(j["nodes"], "n2") << j.dump();
  };
  // The first job goes to n1 (both idle), gets no answer, and moves on at
  // BatchStartTimeout.
  int64_t first = submit();
  running_on_n2(first);
  EXPECT_EQ(to_n1(), 1u);
  EXPECT_TRUE(has(job(first)["history"], "BatchStartTimeout")) << job(first)["history"].dump();
  // n1 looks idle, but has not been heard from since: nothing more goes there.
  std::vector<int64_t> ids;
  for (int i = 0; i < 3; ++i) ids.push_back(submit());
  for (int64_t id : ids) running_on_n2(id);
  EXPECT_EQ(to_n1(), 1u) << "a job was placed on a node silent since it lost a launch";
  EXPECT_EQ(node_info("n1")["state"], "IDLE") << "not silent for SlurmdTimeout yet";
  go.set_value();
}

TEST_F(Recovery, ARestoreTheNodeReportsUnderWayOutlivesBatchStartTimeout) {
  set_alive({"n1", "n2"});
  FakeNode* fake = node;
  node->answer = [fake](const FakeNode::Call& c) -> json {
    if (c.path == "/v1/node/launch") {
      int64_t id = c.body["job_id"];
      {
        std::lock_guard l(fake->mu);
        fake->ops[c.node].insert(id);
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(2500));
      std::lock_guard l(fake->mu);
      fake->ops[c.node].erase(id);
    }
    return json{{"pid", 7}};
  };
  int64_t id = submit();
  json j = wait_job(id, [&](const json& x) {
    return x["state"] == "RUNNING" && !node->of("/v1/node/launch").empty();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(3000));
  j = job(id);
  EXPECT_EQ(j["state"], "RUNNING") << j.dump();
  EXPECT_EQ(j["generation"], 1);
  EXPECT_EQ(node->of("/v1/node/launch").size(), 1u) << "a start under way was given up";
}

TEST_F(Recovery, RestartedControllerGivesNodesAGracePeriod) {
  int64_t id = job_on_n1();
  // The controller is away for longer than SlurmdTimeout, and so are the heartbeats.
  rebuild(std::chrono::milliseconds(1500), {"n2"});
  auto t0 = std::chrono::steady_clock::now();
  std::this_thread::sleep_for(std::chrono::milliseconds(700));
  json j = job(id);
  EXPECT_EQ(j["state"], "RUNNING") << "failed during the grace period: " << j.dump();
  EXPECT_EQ(j["nodes"], "n1");
  EXPECT_NE(node_info("n1")["state"], "DOWN");
  ASSERT_TRUE(eventually([&] { return node_info("n1")["state"] == "DOWN"; }));
  EXPECT_GE(since(t0), 1.8) << "DOWN before SlurmdTimeout + requeue_timeout after the start";
  j = wait_job(id, [&](const json& x) {
    return x["state"] == "RUNNING" && x["nodes"] == "n2" && !node->of("/v1/node/launch").empty();
  });
  EXPECT_EQ(j["nodes"], "n2") << j.dump();
  EXPECT_EQ(j["generation"], 2);
}

TEST_F(Recovery, AdminDownIsKeptAcrossAControllerRestart) {
  set_alive({"n1", "n2"});
  A::update_node(*ctld, root({"n2"}, {{"state", "DOWN"}, {"reason", "bad disk"}}));
  rebuild(std::chrono::milliseconds(0), {"n1", "n2"});
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  json n2 = node_info("n2");
  EXPECT_EQ(n2["state"], "DOWN") << n2.dump();
  EXPECT_EQ(n2["reason"], "bad disk");
  EXPECT_GT(n2["down_time"].get<double>(), 0);
}

}  // namespace
}  // namespace fsched::ctld
