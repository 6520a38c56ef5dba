// Fixtures of the controller unit tests (controller_test.cpp, drain_test.cpp): the
// controller driven through its routes with a fake node in place of fschedd
// (NodeClient), its scheduling thread running as in fschedctld.
#pragma once

#include <gtest/gtest.h>

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <functional>
#include <future>
#include <map>
#include <mutex>
#include <set>
#include <thread>

#include "common/error.h"
#include "ctld/controller.h"

namespace fsched::ctld {

// Calls the controller's private route handlers, as the RPC server would.
struct ControllerTestAccess {
  static nlohmann::json submit(Controller& c, const proto::Request& r) { return c.submit(r); }
  static nlohmann::json show(Controller& c, const proto::Request& r) { return c.show_job(r); }
  static nlohmann::json heartbeat(Controller& c, const proto::Request& r) {
    return c.node_heartbeat(r);
  }
  static nlohmann::json checkpoint(Controller& c, const proto::Request& r, CheckpointSource s) {
    return c.checkpoint_job(r, s);
  }
  static nlohmann::json restart(Controller& c, const proto::Request& r) { return c.restart_job(r); }
  static nlohmann::json suspend(Controller& c, const proto::Request& r) { return c.suspend_job(r); }
  static nlohmann::json resume(Controller& c, const proto::Request& r) { return c.resume_job(r); }
  static nlohmann::json checkpoints(Controller& c, const proto::Request& r) {
    return c.list_checkpoints(r);
  }
  static nlohmann::json requeue(Controller& c, const proto::Request& r) { return c.requeue_job(r); }
  static nlohmann::json job_ended(Controller& c, const proto::Request& r) {
    return c.node_job_ended(r);
  }
  static nlohmann::json op_done(Controller& c, const proto::Request& r) {
    return c.node_op_done(r);
  }
  static nlohmann::json cancel(Controller& c, const proto::Request& r) { return c.cancel_job(r); }
  static nlohmann::json delete_checkpoint(Controller& c, const proto::Request& r) {
    return c.delete_checkpoint(r);
  }
  static nlohmann::json nodes(Controller& c) { return c.list_nodes(proto::Request{}); }
  static nlohmann::json update_node(Controller& c, const proto::Request& r) {
    return c.update_node(r);
  }
};

using nlohmann::json;

// fschedd as the controller sees it: each request is recorded, and answered by
// `answer` (which may throw as the real client does).
struct FakeNode : NodeClient {
  struct Call {
    std::string node, path;
    json body;
  };
  std::mutex mu;
  std::vector<Call> calls;
  std::function<json(const Call&)> answer = [](const Call&) { return json{{"pid", 4242}}; };

  // What each node runs (job -> generation) and has an operation record of, as its
  // heartbeats report them: a launch or restore that was answered starts a run, a
  // SIGKILL ends it.
  std::map<std::string, std::map<int64_t, int64_t>> runs;
  std::map<std::string, std::set<int64_t>> ops;

  json post(const std::string& node, std::string_view path, const json& body, int) override {
    Call c{node, std::string(path), body};
    std::function<json(const Call&)> a;
    {
      std::lock_guard l(mu);
      calls.push_back(c);
      a = answer;
    }
    json out = a(c);
    std::lock_guard l(mu);
    if (c.path == "/v1/node/launch" || c.path == "/v1/node/restore")
      runs[node][body.at("job_id").get<int64_t>()] = body.value("generation", int64_t{0});
    if (c.path == "/v1/node/signal" && body.value("signal", 0) == SIGKILL)
      runs[node].erase(body.at("job_id").get<int64_t>());
    return out;
  }
  std::vector<Call> of(const std::string& path) {
    std::lock_guard l(mu);
    std::vector<Call> out;
    for (auto& c : calls)
      if (c.path == path) out.push_back(c);
    return out;
  }
};

// A dump as fschedd makes it: the image directory appears.
inline json dumped(const FakeNode::Call& c) {
  std::filesystem::create_directories(c.body.at("dir").get<std::string>());
  return json{{"size", 4096}, {"freeze_ms", 1.5}, {"dump_ms", 3.0}};
}

class ControllerTest : public ::testing::Test {
 protected:
  std::filesystem::path dir;
  FakeNode* node = nullptr;
  std::unique_ptr<Controller> ctld;
  proto::Config cfg;
  // The cluster of fsched.conf: one node unless a derived fixture says otherwise.
  std::string cluster_conf =
      "NodeName=n1 CPUs=4 RealMemory=8000\n"
      "PartitionName=debug Nodes=n1 Default=YES\n";
  std::function<void(proto::Config&)> tune = [](proto::Config&) {};

  void SetUp() override {
    char tmpl[] = "/tmp/fsched-ctld-XXXXXX";
    dir = ::mkdtemp(tmpl);
    cfg = proto::parse_config(
        "ControlMachine = head\n"
        "StateSaveLocation = " +
            (dir / "state").string() +
            "\n"
            "CheckpointDir = " +
            (dir / "ckpt").string() +
            "\n"
            "SlurmdSpoolDir = " +
            (dir / "spool").string() + "\n" + cluster_conf,
        dir / "fsched.conf");
    tune(cfg);
    auto fake = std::make_unique<FakeNode>();
    node = fake.get();
    ctld = std::make_unique<Controller>(cfg, std::move(fake));
    ControllerTestAccess::heartbeat(*ctld,
                                    root({}, {{"name", "n1"}, {"cpus", 4}, {"real_memory", 8000}}));
    ctld->start();
  }
  void TearDown() override {
    ctld.reset();
    std::filesystem::remove_all(dir);
  }

  static proto::Request root(std::vector<std::string> params, json body = nullptr) {
    proto::Request r;
    r.params = std::move(params);
    r.body = std::move(body);
    return r;
  }
  int64_t submit(json extra = json::object()) {
    json body = {{"script", "#!/bin/sh\nsleep 100\n"}, {"work_dir", dir.string()}, {"name", "t"}};
    body.update(extra);
    return ControllerTestAccess::submit(*ctld, root({}, body)).at("job_id").get<int64_t>();
  }
  json job(int64_t id) { return ControllerTestAccess::show(*ctld, root({std::to_string(id)})); }
  json checkpoints(int64_t id) {
    return ControllerTestAccess::checkpoints(*ctld, root({std::to_string(id)})).at("checkpoints");
  }
  // The HTTP status a route handler answered fn with: its RpcError's, or 200.
  static int status_of(const std::function<void()>& fn) {
    try {
      fn();
    } catch (const proto::RpcError& e) {
      return e.status();
    }
    return 200;
  }
  // Polls pred for 5 s at most; whether it came true.
  static bool eventually(const std::function<bool()>& pred) {
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
    while (!pred()) {
      if (std::chrono::steady_clock::now() >= end) return false;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    return true;
  }
  // Waits (5 s at most) until pred(job) holds; the job as it then is.
  json wait_job(int64_t id, const std::function<bool(const json&)>& pred) {
    json j;
    eventually([&] { return pred(j = job(id)); });
    return j;
  }
  // A job running on n1, whose node answers checkpoints with an image directory and
  // restores with a pid.
  int64_t running_job_that_dumps() {
    int64_t id = submit();
    wait_running(id);
    node->answer = [](const FakeNode::Call& c) -> json {
      if (c.path == "/v1/node/checkpoint") return dumped(c);
      return json{{"pid", 1}};
    };
    return id;
  }
  // Reports the run's end as fschedd does: a 409 (its start not confirmed yet) is
  // reported again, for 5 s at most.
  void ended(int64_t id, int status) {
    json body = {{"job_id", id}, {"exit_status", status}, {"name", "n1"}};
    bool taken = eventually([&] {
      try {
        ControllerTestAccess::job_ended(*ctld, root({}, body));
        return true;
      } catch (const proto::RpcError& e) {
        if (e.status() != 409) throw;
        return false;
      }
    });
    ASSERT_TRUE(taken) << "the end of job " << id << " was refused for 5 s";
  }
  json checkpoint(const std::string& sid, CheckpointSource source) {
    return ControllerTestAccess::checkpoint(*ctld, root({sid}, json::object()), source);
  }
  json wait_running(int64_t id) {
    // RUNNING is set before the launch RPC; launched once its answer came.
    return wait_job(id, [&](const json& j) {
      return j["state"] == "RUNNING" && !node->of("/v1/node/launch").empty() &&
             j["restore_from"] == 0;
    });
  }
};

// Node failure (docs/node-failure.md) on two nodes, with SlurmdTimeout = requeue_timeout =
// BatchStartTimeout = 1 s: the nodes in `alive` heartbeat every 100 ms, reporting the
// runs and operation records the fake node holds.
class Recovery : public ControllerTest {
 protected:
  std::mutex beat_mu;           // held while beating; rebuild() takes it
  std::set<std::string> alive;  // guarded by beat_mu
  std::atomic<bool> stop_beats{false};
  std::thread beater;
  int slurmd_timeout = 1;  // s; a derived fixture may detect silence later

  // The two nodes and their partitions (a derived fixture may change it before SetUp).
  std::string two_nodes_conf =
      "NodeName=n1 CPUs=4 RealMemory=8000\n"
      "NodeName=n2 CPUs=4 RealMemory=8000\n"
      "PartitionName=debug Nodes=n1,n2 Default=YES\n";

  void SetUp() override {
    cluster_conf = two_nodes_conf;
    tune = [this](proto::Config& c) {
      c.slurmd_timeout = slurmd_timeout;
      c.requeue_timeout = 1;
      c.batch_start_timeout = 1;
      c.kill_wait = 1;
    };
    ControllerTest::SetUp();
    set_alive({"n1"});  // n2 joins once the first job is on n1
    beater = std::thread([this] {
      while (!stop_beats) {
        {
          std::lock_guard l(beat_mu);
          for (auto& n : alive) beat_locked(n);
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
    });
  }
  void TearDown() override {
    stop_beats = true;
    if (beater.joinable()) beater.join();
    ControllerTest::TearDown();
  }
  void set_alive(std::set<std::string> names) {
    std::lock_guard l(beat_mu);
    alive = std::move(names);
  }
  // One heartbeat of node, as fschedd sends it; the controller's reply.
  json beat_locked(const std::string& name) {
    json jobs = json::array(), ops = json::array();
    {
      std::lock_guard l(node->mu);
      for (auto& [id, gen] : node->runs[name])
        jobs.push_back({{"job_id", id}, {"generation", gen}, {"running", true}});
      for (auto id : node->ops[name]) ops.push_back({{"job_id", id}, {"kind", "restore"}});
    }
    return ControllerTestAccess::heartbeat(
        *ctld,
        root({},
             {{"name", name}, {"cpus", 4}, {"real_memory", 8000}, {"jobs", jobs}, {"ops", ops}}));
  }
  json beat(const std::string& name) {
    std::lock_guard l(beat_mu);
    return beat_locked(name);
  }
  json node_info(const std::string& name) {
    json all = ControllerTestAccess::nodes(*ctld);
    for (auto& n : all["nodes"])
      if (n["name"] == name) return n;
    return nullptr;
  }
  // The controller stops, and a new one starts on the same state `pause` later.
  void rebuild(std::chrono::milliseconds pause, std::set<std::string> then_alive) {
    std::lock_guard l(beat_mu);
    ctld.reset();
    std::this_thread::sleep_for(pause);
    auto fake = std::make_unique<FakeNode>();
    node = fake.get();
    ctld = std::make_unique<Controller>(cfg, std::move(fake));
    ctld->start();
    alive = std::move(then_alive);
  }
  // A job running on n1 (n2 then up too) that answers dumps and restores.
  int64_t job_on_n1(json extra = json::object()) {
    int64_t id = submit(extra);
    json j = wait_running(id);
    EXPECT_EQ(j["nodes"], "n1") << j.dump();
    set_alive({"n1", "n2"});
    node->answer = [](const FakeNode::Call& c) -> json {
      if (c.path == "/v1/node/checkpoint") return dumped(c);
      return json{{"pid", 1}};
    };
    EXPECT_TRUE(eventually([&] { return node_info("n2")["state"] == "IDLE"; }));
    return id;
  }
  static bool has(const json& history, const std::string& text) {
    for (auto& h : history)
      if (h.get<std::string>().find(text) != std::string::npos) return true;
    return false;
  }
  static double since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
};

}  // namespace fsched::ctld
