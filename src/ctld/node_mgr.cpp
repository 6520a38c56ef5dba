// The controller's node manager: node and partition lists, heartbeats and
// registration (reconciling what a node reports with what the controller knows),
// and the outcome of operations a node reports (op_done).
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

bool Controller::node_up(const Node& n) const {
  return n.last_heartbeat > 0 && now_s() - n.last_heartbeat < cfg_.slurmd_timeout;
}

proto::NodeState Controller::node_state(const Node& n) const {
  using proto::NodeState;
  if (n.last_heartbeat == 0) return NodeState::Unknown;
  if (!node_up(n)) return NodeState::Down;
  if (n.alloc_cpus == 0) return NodeState::Idle;
  return n.alloc_cpus >= n.cpus ? NodeState::Allocated : NodeState::Mixed;
}

nlohmann::json Controller::node_op_done(const proto::Request& r) {
  if (!r.caller.is_root()) throw RpcError(403, "only root (fschedd) may report for a node");
  int64_t id = field<int64_t>(r.body, "job_id", 0);
  std::string node = field<std::string>(r.body, "name", "");
  std::string kind = field<std::string>(r.body, "kind", "");
  std::string outcome = field<std::string>(r.body, "outcome", "");
  std::string error = field<std::string>(r.body, "error", "");
  std::string dir = field<std::string>(r.body, "dir", "");
  Lock l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return json::object();
  Job& j = it->second;
  if (kind == "checkpoint" || kind == "vacate") {
    for (auto& c : ckpts_[id]) {
      if (c.location != dir || c.status != CheckpointStatus::Creating) continue;
      if (settle_checkpoint(id, c.checkpoint_id,
                            outcome == "ok"        ? CheckpointStatus::Present
                            : outcome == "timeout" ? CheckpointStatus::Timeout
                                                   : CheckpointStatus::Failed,
                            outcome == "failed" ? classified(failure_field(r.body), error) : error,
                            field<uint64_t>(r.body, "size", 0),
                            field<double>(r.body, "freeze_ms", 0.0)))
        spdlog::info("job {}: {} outcome reported by {}: {}", id, kind, node, outcome);
      break;
    }
    return json::object();
  }
  // launch/restore: only an unanswered RPC waits for this; an answered one has been
  // handled by launch().
  if (j.state != JobState::Running || j.nodes != node || !j.awaiting_node || launching_.count(id))
    return json::object();
  if (outcome == "ok") {
    confirm_launch(j, fmt::format("{} reported by the node", kind));
  } else {
    j.awaiting_node = false;
    launch_failed(j, error, failure_field(r.body));
  }
  return json::object();
}

nlohmann::json Controller::list_nodes(const proto::Request&) {
  Lock l(mu_);
  json arr = json::array();
  for (auto& [name, n] : nodes_) {
    json parts = json::array();
    for (auto& p : cfg_.partitions)
      if (std::find(p.nodes.begin(), p.nodes.end(), name) != p.nodes.end()) parts.push_back(p.name);
    arr.push_back({{"name", name},
                   {"state", node_state(n)},
                   {"reason", n.reason},
                   {"addr", n.addr},
                   {"port", n.port},
                   {"cpus", n.cpus},
                   {"alloc_cpus", n.alloc_cpus},
                   {"real_memory", n.real_memory},
                   {"alloc_memory", n.alloc_memory},
                   {"free_memory", n.free_memory},
                   {"load", n.load},
                   {"cpu_util", n.cpu_util},
                   {"io_wait", n.io_wait},
                   {"mem_util", n.mem_util},
                   {"partitions", parts},
                   {"last_heartbeat", n.last_heartbeat}});
  }
  return {{"nodes", std::move(arr)}};
}

nlohmann::json Controller::list_partitions(const proto::Request&) {
  Lock l(mu_);
  json arr = json::array();
  const proto::PartitionConf* def = cfg_.default_partition();
  for (auto& p : cfg_.partitions) {
    int cpus = 0;
    for (auto& n : p.nodes) cpus += nodes_.at(n).cpus;
    arr.push_back({{"name", p.name},
                   {"nodes", p.nodes},
                   {"default", &p == def},
                   {"state", p.up ? "UP" : "DOWN"},
                   {"max_time", p.max_time},
                   {"total_cpus", cpus},
                   {"total_nodes", p.nodes.size()}});
  }
  return {{"partitions", std::move(arr)}};
}

nlohmann::json Controller::node_heartbeat(const proto::Request& r) {
  if (!r.caller.is_root()) throw RpcError(403, "only root (fschedd) may report for a node");
  std::string name = field<std::string>(r.body, "name", "");
  Lock l(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end())
    throw RpcError(400, fmt::format("node {} is not in {}", name, cfg_.file.string()));
  Node& n = it->second;
  int64_t cpus = proto::int_field(r.body, "cpus", n.cpus, 0, kMaxCpus);
  int64_t real_memory =
      proto::int_field(r.body, "real_memory", static_cast<int64_t>(n.real_memory), 0, kMaxMemMb);
  auto free_memory = static_cast<uint64_t>(
      proto::int_field(r.body, "free_memory", static_cast<int64_t>(n.real_memory), 0, kMaxMemMb));
  if (!node_up(n)) spdlog::info("node {}: registered ({} CPUs, {} MiB)", name, cpus, real_memory);
  n.last_heartbeat = now_s();
  reconcile(name, field<json>(r.body, "jobs", json::array()),
            field<json>(r.body, "ops", json::array()));
  n.load = field<double>(r.body, "load", 0.0);
  n.free_memory = free_memory;
  n.cpu_util = field<double>(r.body, "cpu_util", 0.0);
  n.io_wait = field<double>(r.body, "io_wait", 0.0);
  n.mem_util = field<double>(r.body, "mem_util", 0.0);
  wake_.notify_all();
  return json::object();
}

void Controller::reconcile(const std::string& node, const json& reported, const json& ops) {
  std::set<int64_t> there, busy;
  for (auto& x : reported)
    if (x.is_object()) there.insert(x.value("job_id", int64_t{0}));
  // Jobs with an operation under way on the node, or done and not yet reported.
  for (auto& x : ops)
    if (x.is_object()) busy.insert(x.value("job_id", int64_t{0}));
  double now = now_s();
  for (auto& [id, j] : jobs_) {
    if (j.state != JobState::Running || j.nodes != node || launching_.count(id)) continue;
    // A launch or restore whose answer was lost: the node runs the job, so it started.
    if (j.awaiting_node && there.count(id) && !busy.count(id)) {
      confirm_launch(j, "found running at the node's report");
      continue;
    }
    // Dumps still Creating although the node neither runs nor keeps a record of them
    // and no RPC of ours is in flight: the request never reached the node.
    if (!busy.count(id) && !ckpt_rpc_.count(id) && ckpt_busy_.count(id)) {
      std::vector<int64_t> stale;
      for (auto& c : ckpts_[id])
        if (c.status == CheckpointStatus::Creating && now - c.trigger_time > 30)
          stale.push_back(c.checkpoint_id);
      for (int64_t cid : stale)
        settle_checkpoint(id, cid, CheckpointStatus::Failed,
                          fmt::format("node {} has no record of this dump: it never started", node),
                          0, 0.0);
    }
    // A job the node does not know although it was placed there a while ago: its
    // launch never happened (the controller stopped during it) or the node lost it.
    // Recent starts are left alone: the report may predate them.
    if (there.count(id) || busy.count(id) || ckpt_busy_.count(id) || now - j.start_time < 30)
      continue;
    spdlog::warn("job {}: node {} does not know it: NODE_FAIL", id, node);
    release(j, now);
    j.state = JobState::NodeFail;
    j.reason = "NodeFail";
    j.end_time = now;
    j.end_request.clear();
    j.awaiting_node = false;
    save(j);
  }
}

}  // namespace fsched::ctld
