// fschedctld's core: loading the state, the scheduling thread, worker threads, the
// RPC client to the nodes and the table of routes. The routes and the lifecycle are
// in job_mgr.cpp (jobs), ckpt_mgr.cpp (checkpoints), node_mgr.cpp (nodes) and
// sched.cpp (placement, launch and restore, periodic duties), as slurmctld has
// job_mgr.c, node_mgr.c, ...
#include "ctld/controller.h"

#include <malloc.h>
#include <pwd.h>
#include <grp.h>
#include <signal.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <limits>

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/failure.h"
#include "proto/json_number.h"
#include "proto/timefmt.h"
#include "proto/node_requests.h"
#include "ctld/controller_impl.h"

namespace fsched::ctld {

using proto::RpcError;

Controller::Controller(proto::Config cfg, std::unique_ptr<NodeClient> node_rpc)
    : cfg_(std::move(cfg)),
      node_rpc_(node_rpc ? std::move(node_rpc) : rpc_node_client(cfg_)),
      store_(cfg_.state_save_location) {
  for (auto& j : store_.jobs()) jobs_[j.job_id] = std::move(j);
  for (auto& c : store_.checkpoints()) {
    // A dump the previous controller was waiting for goes on (or ended) on its node,
    // which keeps its outcome until it has reported it: the checkpoint stays Creating
    // and the job busy until then (or until the node shows it has no such dump).
    if (c.status == CheckpointStatus::Creating) ckpt_busy_.insert(c.job_id);
    ckpts_[c.job_id].push_back(c);
  }
  for (auto& n : cfg_.nodes) {
    Node node;
    node.name = n.name;
    node.addr = n.addr;
    node.port = n.port;
    node.cpus = n.cpus;
    node.real_memory = n.real_memory;
    node.free_memory = n.real_memory;
    nodes_[n.name] = node;
  }
  started_ = now_s();
  load_jwt_key();
  for (auto& [name, d] : store_.nodes()) {
    auto it = nodes_.find(name);
    if (it == nodes_.end()) continue;  // a node no longer in fsched.conf
    static_cast<NodeAdmin&>(it->second) = d;
    if (d.down)
      spdlog::info("node {}: DOWN since {} ({})", name, proto::format_timestamp(d.down_time),
                   d.reason);
    if (d.drain)
      spdlog::info("node {}: DRAIN since {} by {} ({})", name,
                   proto::format_timestamp(d.drain_time), d.drain_user, d.drain_reason);
  }
  // Resources held by jobs that were running when the controller stopped.
  for (auto& [id, j] : jobs_) {
    if (j.state != JobState::Running) continue;
    if (auto it = nodes_.find(j.nodes); it != nodes_.end()) {
      it->second.alloc_cpus += j.num_cpus();
      it->second.alloc_memory += j.mem_mb;
      // Grace (docs/node-failure.md): the node's last heartbeat counts as the
      // controller's start, so nothing fails before SlurmdTimeout + requeue_timeout
      // after it; a node persisted DOWN also waits out a lease the previous controller
      // may have renewed just before it stopped.
      it->second.last_heartbeat = started_;
    }
    // A start the previous controller sent and never saw confirmed: BatchStartTimeout
    // counts from now.
    if (j.awaiting_node) launch_sent_[id] = started_;
  }
  // What loading parsed is garbage now; give it back to the system.
  ::malloc_trim(0);
  spdlog::info("controller: {} jobs and {} checkpoints loaded from {}", jobs_.size(),
               store_.checkpoints().size(), (cfg_.state_save_location / "fsched.db").string());
}

Controller::~Controller() { stop(); }

void Controller::start() {
  {
    // Images of Failed, Timeout and Cleared checkpoints, and DIR.tmp leftovers of settled ones,
    // that an earlier controller did not get to remove. Only the list is made under
    // mu_; the file system is looked at by a worker (storage may be slow or large).
    Lock l(mu_);
    std::vector<std::pair<std::string, bool>> sweep;  // location, whole image (else DIR.tmp only)
    for (auto& [id, list] : ckpts_)
      for (auto& c : list)
        if (c.status != CheckpointStatus::Creating && !c.location.empty())
          sweep.emplace_back(
              c.location,
              c.status == CheckpointStatus::Timeout || c.status == CheckpointStatus::Cleared ||
                  (c.status == CheckpointStatus::Failed && !kept_after_failed_restore(c)));
    spawn([sweep = std::move(sweep)] {
      for (auto& [loc, whole] : sweep) {
        std::error_code ec;
        if (whole && std::filesystem::exists(loc, ec)) {
          std::filesystem::remove_all(loc, ec);
          if (ec) spdlog::warn("cannot remove the image {}: {}", loc, ec.message());
        }
        if (whole && std::filesystem::exists(loc + ".pre", ec))
          std::filesystem::remove_all(loc + ".pre", ec);
        for (const char* suffix : {".tmp", ".pre.tmp"})
          if (std::filesystem::exists(loc + suffix, ec))
            std::filesystem::remove_all(loc + suffix, ec);
      }
    });
  }
  loop_ = std::thread([this] {
    Lock l(mu_);
    while (!stopping_) {
      try {
        double now = now_s();
        check_nodes(now);
        check_batch_start(now);
        drain_nodes(now);
        resume_preempted();
        schedule();
        preempt(now);
        periodic();
      } catch (const std::exception& e) {
        spdlog::error("scheduler: {}", e.what());
      }
      wake_.wait_for(l, std::chrono::milliseconds(250));
    }
  });
}

void Controller::stop() {
  {
    Lock l(mu_);
    if (stopping_) return;
    stopping_ = true;
    wake_.notify_all();
  }
  if (loop_.joinable()) loop_.join();
  Lock l(mu_);
  workers_done_.wait(l, [this] { return workers_ == 0; });
}

void Controller::spawn(std::function<void()> fn) {
  ++workers_;
  std::thread([this, fn = std::move(fn)] {
    try {
      fn();
    } catch (const std::exception& e) {
      spdlog::error("worker: {}", e.what());
    }
    Lock l(mu_);
    if (--workers_ == 0) workers_done_.notify_all();
  }).detach();
}

namespace {
// fschedd over the authenticated RPC, at the NodeAddr:Port of fsched.conf (which does
// not change while the controller runs, so no lock is needed to look it up).
class RpcNodeClient final : public NodeClient {
 public:
  explicit RpcNodeClient(const proto::Config& cfg) : cfg_(cfg) {}
  nlohmann::json post(const std::string& node, std::string_view path, const nlohmann::json& body,
                      int timeout_s) override {
    const proto::NodeConf* n = cfg_.node(node);
    if (!n) fail("node {} is not in {}", node, cfg_.file.string());
    return proto::Client(n->addr, n->port, cfg_.munge_socket, timeout_s, cfg_.munge_ttl)
        .call("POST", path, body);
  }

 private:
  const proto::Config& cfg_;
};
}  // namespace

std::unique_ptr<NodeClient> rpc_node_client(const proto::Config& cfg) {
  return std::make_unique<RpcNodeClient>(cfg);
}

void Controller::save(const Job& j) { store_.put_job(j); }

void Controller::save(const Checkpoint& c) { store_.put_checkpoint(c); }

void Controller::add_routes(proto::Server& s) {
  add_user_routes(s);
  s.route("POST", "/v1/token", handler(&Controller::issue_token));
  s.route("POST", "/v1/nodes/register", handler(&Controller::node_heartbeat));
  s.route("POST", "/v1/nodes/heartbeat", handler(&Controller::node_heartbeat));
  s.route("POST", "/v1/nodes/job_ended", handler(&Controller::node_job_ended));
  s.route("POST", "/v1/nodes/op_done", handler(&Controller::node_op_done));
}

}  // namespace fsched::ctld
