// The controller's node manager: node and partition lists, heartbeats and
// registration (reconciling what a node reports with what the controller knows),
// and the outcome of operations a node reports (op_done).
#include "ctld/controller.h"

#include <malloc.h>
#include <pwd.h>
#include <grp.h>
#include <signal.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <chrono>
#include <cmath>
#include <limits>

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/failure.h"
#include "common/text.h"
#include "proto/json_number.h"
#include "proto/timefmt.h"
#include "proto/node_requests.h"
#include "ctld/controller_impl.h"

namespace fsched::ctld {

using proto::RpcError;

bool Controller::node_up(const Node& n) const {
  return !n.down && n.last_heartbeat > 0 && now_s() - n.last_heartbeat < cfg_.slurmd_timeout;
}

proto::NodeState Controller::node_state(const Node& n) const {
  using proto::NodeState;
  if (n.down) return NodeState::Down;
  if (n.drain) return n.alloc_cpus > 0 ? NodeState::Draining : NodeState::Drained;
  if (n.last_heartbeat == 0) return NodeState::Unknown;
  // A silent node keeps its state (and its jobs) until it is set DOWN; the list
  // flags it not_responding (sinfo's "*").
  if (n.alloc_cpus == 0) return NodeState::Idle;
  return n.alloc_cpus >= n.cpus ? NodeState::Allocated : NodeState::Mixed;
}

bool Controller::lease_expired(const Node& n, double now) const {
  return n.last_heartbeat == 0 || now - n.last_heartbeat >= cfg_.slurmd_timeout;
}

void Controller::check_nodes(double now) {
  for (auto& [name, n] : nodes_) {
    if (!n.down && n.last_heartbeat > 0) {
      double silent = now - n.last_heartbeat;
      if (silent >= cfg_.slurmd_timeout && !n.not_responding) {
        n.not_responding = true;
        spdlog::warn(
            "node {}: NOT_RESPONDING: no heartbeat for {:.0f} s (SlurmdTimeout {} s); its jobs "
            "stay "
            "where they are; DOWN in {:.0f} s",
            name, silent, cfg_.slurmd_timeout, cfg_.slurmd_timeout + cfg_.requeue_timeout - silent);
      }
      if (silent >= cfg_.slurmd_timeout + cfg_.requeue_timeout)
        set_down(n, std::string(kNotResponding), now, "root");
    }
    if (!n.down) continue;
    // The runs of a DOWN node end once they surely have: its lease has run out (they
    // are frozen, and killed when it comes back). Before that (an administrator's
    // DOWN of a live node) they end by the node's report.
    if (!lease_expired(n, now)) continue;
    for (auto& [id, j] : jobs_)
      if (j.on_node() && j.nodes == name)
        recover(j, now,
                fmt::format("node {} DOWN ({}), its lease expired at {}", name, n.reason,
                            proto::format_timestamp(n.last_heartbeat + cfg_.slurmd_timeout)));
  }
}

void Controller::persist(const Node& n) {
  store_.put_node(n.name, static_cast<const NodeAdmin&>(n));
}

void Controller::set_down(Node& n, const std::string& reason, double now, const std::string& user) {
  bool was_down = n.down;
  n.down = true;
  n.reason = reason;
  n.down_time = was_down ? n.down_time : now;
  n.down_user = user;
  n.not_responding = false;
  persist(n);
  if (was_down) {
    spdlog::info("node {}: DOWN, reason now \"{}\"", n.name, reason);
    return;
  }
  bool expired = lease_expired(n, now);
  spdlog::warn("node {}: DOWN (reason \"{}\"){}", n.name, reason,
               expired ? "" : "; its runs are killed and recovered once they have ended");
  for (auto& [id, j] : jobs_) {
    if (!j.on_node() || j.nodes != n.name) continue;
    if (expired) {
      recover(j, now, fmt::format("node {} DOWN ({})", n.name, reason));
    } else {
      note(j, fmt::format("node {} set DOWN ({}): run killed", n.name, reason));
      save(j);
      terminate(j, SIGKILL, false);
    }
  }
  wake_.notify_all();
}

nlohmann::json Controller::update_node(const proto::Request& r) {
  // Slurm lets root and SlurmUser change a node's state; fsched has no SlurmUser key:
  // root only.
  if (!r.caller.is_root())
    throw RpcError(403, "Access/permission denied: only root may update a node");
  std::string name = r.params.at(0);
  std::string state = field<std::string>(r.body, "state", "");
  std::string reason = field<std::string>(r.body, "reason", "");
  for (auto& c : state) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  if (state != "DOWN" && state != "DRAIN" && state != "UNDRAIN" && state != "RESUME")
    throw RpcError(400,
                   fmt::format("Invalid node state specified: '{}' (use DOWN, DRAIN, UNDRAIN or "
                               "RESUME)",
                               field<std::string>(r.body, "state", "")));
  if ((state == "DOWN" || state == "DRAIN") && trim(reason).empty())
    throw RpcError(400,
                   fmt::format("You must specify a reason when setting the state to {}", state));
  Lock l(mu_);
  auto it = nodes_.find(name);
  if (it == nodes_.end()) throw RpcError(404, fmt::format("Invalid node name specified: {}", name));
  Node& n = it->second;
  double now = now_s();
  std::string who = user_name(r.caller.uid);
  if (state == "DOWN") {
    spdlog::info("node {}: set DOWN by {}: {}", name, who, reason);
    set_down(n, reason, now, who);
  } else if (state == "DRAIN") {
    // A new DRAIN (or a new reason) gives the jobs it left running another chance.
    for (auto& [id, m] : drain_moves_)
      if (auto jit = jobs_.find(id); jit != jobs_.end() && jit->second.nodes == name)
        m = DrainMove{.generation = m.generation, .in_flight = m.in_flight};
    n.drain_time = n.drain ? n.drain_time : now;
    n.drain = true;
    n.drain_reason = reason;
    n.drain_user = who;
    persist(n);
    int moving = 0, staying = 0;
    for (auto& [id, j] : jobs_)
      if (j.state == JobState::Running && j.nodes == name)
        ++(j.checkpoint_interval > 0 && cfg_.checkpoint_type != "checkpoint/none" ? moving
                                                                                  : staying);
    spdlog::info(
        "node {}: DRAIN by {}: {}; {} job(s) to move by checkpoint, {} without checkpointing run "
        "on until they end",
        name, who, reason, moving, staying);
    wake_.notify_all();
  } else {
    if (!n.drain && (state == "UNDRAIN" || !n.down))
      throw RpcError(409, fmt::format("Node {} is not {} (state {}): nothing to {}", name,
                                      state == "UNDRAIN" ? "DRAIN" : "DOWN or DRAIN", node_state(n),
                                      fsched::lower(state)));
    if (state == "RESUME") {
      n.down = false;
      n.reason.clear();
      n.down_time = 0;
      n.down_user.clear();
    }
    n.drain = false;
    n.drain_reason.clear();
    n.drain_user.clear();
    n.drain_time = 0;
    persist(n);
    spdlog::info("node {}: {} by {}: back in service{}", name, state, who,
                 node_up(n) ? "" : " once it responds");
    wake_.notify_all();
  }
  return json::object();
}

void Controller::drain_nodes(double now) {
  // Attempts of jobs no longer running on a drained node are of no more use.
  std::erase_if(drain_moves_, [&](const auto& e) {
    auto jit = jobs_.find(e.first);
    if (e.second.in_flight) return false;
    if (jit == jobs_.end() || jit->second.state != JobState::Running) return true;
    auto nit = nodes_.find(jit->second.nodes);
    return nit == nodes_.end() || !nit->second.drain;
  });
  for (auto& [name, n] : nodes_) {
    // A DOWN node's runs are recovered by check_nodes(); a silent one cannot dump.
    if (!n.drain || n.down || !node_up(n)) continue;
    for (auto& [id, j] : jobs_) {
      if (j.state != JobState::Running || j.nodes != name) continue;
      // Without checkpointing a job runs on until it ends, as in Slurm.
      if (j.checkpoint_interval <= 0 || cfg_.checkpoint_type == "checkpoint/none") continue;
      if (launching_.count(id) || j.awaiting_node || !j.end_request.empty() || ckpt_busy_.count(id))
        continue;  // not started for sure, ending anyway, or a dump under way: next round
      DrainMove& m = drain_moves_[id];
      if (m.generation != j.generation) m = DrainMove{.generation = j.generation};
      if (m.in_flight || !m.blocked.empty() || now < m.not_before) continue;
      m.in_flight = true;
      int64_t jid = id;
      std::string node = name;
      spawn([this, jid, node] { vacate_for_drain(jid, node); });
    }
  }
}

void Controller::vacate_for_drain(int64_t id, const std::string& node) {
  Checkpoint c;
  std::string error;
  bool refused = false;  // the request was not taken (the job is not in a state to dump)
  try {
    c = run_checkpoint(id, CheckpointSource::Drain, fmt::format("node {} drained", node), nullptr);
  } catch (const RpcError& e) {
    error = e.what();
    refused = true;
  } catch (const std::exception& e) {
    error = e.what();
  }
  Lock l(mu_);
  auto jit = jobs_.find(id);
  auto mit = drain_moves_.find(id);
  if (jit == jobs_.end() || mit == drain_moves_.end()) return;
  Job& j = jit->second;
  DrainMove& m = mit->second;
  m.in_flight = false;
  if (error.empty() && c.status == CheckpointStatus::Present) return;  // settle moved it
  if (refused) {
    m.not_before = now_s() + 1;  // it ended, or started a dump meanwhile: look again
    return;
  }
  std::string why = error.empty()
                        ? fmt::format("checkpoint {} {}: {}", c.checkpoint_id, c.status, c.reason)
                        : error;
  if (j.state != JobState::Running || j.nodes != node) return;
  // The class settle_checkpoint() put in front of the reason ("unsupported failure: ...").
  auto cls = failure_class_from_string(c.reason.substr(0, c.reason.find(" failure: ")));
  bool lasting = cls == FailureClass::kUnsupported || cls == FailureClass::kImage;
  if (lasting || ++m.failures >= kMaxDrainAttempts) {
    m.blocked = why;
    spdlog::warn("job {}: the drain of {} leaves it running there: {}", id, node, why);
    note(j, fmt::format("drain of {}: {}; the job keeps running on {}", node, why, node));
    save(j);
    return;
  }
  m.not_before = now_s() + kDrainRetryDelayS * m.failures;
  spdlog::info("job {}: drain of {}: {}; attempt {} of {} in {:.0f} s", id, node, why,
               m.failures + 1, kMaxDrainAttempts, kDrainRetryDelayS * m.failures);
}

std::vector<proto::RunRef> Controller::stale_runs(const Node& n) const {
  std::vector<proto::RunRef> out;
  for (auto& [id, gen] : n.report_runs) {
    auto it = jobs_.find(id);
    bool current = !n.down && it != jobs_.end() && it->second.on_node() &&
                   it->second.nodes == n.name &&
                   // 0: a node that predates generations; its run is taken for the current one.
                   (gen == 0 || gen == it->second.generation);
    if (!current) out.push_back({id, gen});
  }
  return out;
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
                            field<double>(r.body, "freeze_ms", 0.0),
                            field<std::string>(r.body, "image_kind", ""),
                            field<uint64_t>(r.body, "pre_dump_bytes", 0)))
        spdlog::info("job {}: {} outcome reported by {}: {}", id, kind, node, outcome);
      break;
    }
    return json::object();
  }
  // launch/restore: only an unanswered RPC waits for this; an answered one has been
  // handled by launch().
  int64_t gen = proto::int_field(r.body, "generation", 0, 0, kMaxId);
  if (j.state != JobState::Running || j.nodes != node || !j.awaiting_node || launching_.count(id) ||
      (gen != 0 && gen != j.generation))
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
  double now = now_s();
  json arr = json::array();
  for (auto& [name, n] : nodes_) {
    json parts = json::array();
    for (auto& p : cfg_.partitions)
      if (std::find(p.nodes.begin(), p.nodes.end(), name) != p.nodes.end()) parts.push_back(p.name);
    // Jobs the drain leaves running, and why.
    json blocked = json::array();
    if (n.drain)
      for (auto& [id, m] : drain_moves_)
        if (!m.blocked.empty())
          if (auto jit = jobs_.find(id); jit != jobs_.end() &&
                                         jit->second.state == JobState::Running &&
                                         jit->second.nodes == name)
            blocked.push_back({{"job_id", id}, {"why", m.blocked}});
    // The reason shown is DOWN's when the node is DOWN, else DRAIN's.
    bool drain_reason = !n.down && n.drain;
    arr.push_back({{"name", name},
                   {"state", node_state(n)},
                   {"reason", drain_reason ? n.drain_reason : n.reason},
                   {"reason_user", drain_reason ? n.drain_user : n.down_user},
                   {"reason_time", drain_reason ? n.drain_time : n.down_time},
                   {"drain", n.drain},
                   {"drain_blocked", std::move(blocked)},
                   {"not_responding", !n.down && n.last_heartbeat > 0 &&
                                          now - n.last_heartbeat >= cfg_.slurmd_timeout},
                   {"down_time", n.down_time},
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
  double now = now_s();
  if (n.down && n.reason == kNotResponding && cfg_.return_to_service) {
    // Its jobs were recovered when it went DOWN: the reply's stale list has it kill
    // their old runs before it takes new ones.
    n.down = false;
    n.reason.clear();
    n.down_time = 0;
    n.down_user.clear();
    persist(n);
    spdlog::info("node {}: responding again: back in service (ReturnToService = 1){}", name,
                 n.drain ? ", still DRAIN" : "");
  } else if (n.down) {
    if (lease_expired(n, now))
      spdlog::info("node {}: responding again but stays DOWN ({}){}", name, n.reason,
                   n.reason == kNotResponding ? " (ReturnToService = 0)"
                                              : ": scontrol update NodeName=... State=RESUME");
  } else if (n.not_responding) {
    spdlog::info("node {}: responding again after {:.0f} s of silence", name,
                 now - n.last_heartbeat);
  } else if (!node_up(n)) {
    spdlog::info("node {}: registered ({} CPUs, {} MiB)", name, cpus, real_memory);
  }
  n.not_responding = false;
  n.last_heartbeat = now;
  json jobs = field<json>(r.body, "jobs", json::array());
  json ops = field<json>(r.body, "ops", json::array());
  n.report_time = now;
  n.report_runs.clear();
  n.report_ops.clear();
  if (jobs.is_array())
    for (auto& x : jobs)
      if (x.is_object() && x.contains("job_id") && x["job_id"].is_number_integer())
        n.report_runs[x["job_id"].get<int64_t>()] =
            x.contains("generation") && x["generation"].is_number_integer()
                ? x["generation"].get<int64_t>()
                : 0;
  if (ops.is_array())
    for (auto& x : ops)
      if (x.is_object() && x.contains("job_id") && x["job_id"].is_number_integer())
        n.report_ops.insert(x["job_id"].get<int64_t>());
  reconcile(name, jobs, ops);
  n.load = field<double>(r.body, "load", 0.0);
  n.free_memory = free_memory;
  n.cpu_util = field<double>(r.body, "cpu_util", 0.0);
  n.io_wait = field<double>(r.body, "io_wait", 0.0);
  n.mem_util = field<double>(r.body, "mem_util", 0.0);
  proto::HeartbeatReply reply{.lease = cfg_.slurmd_timeout, .stale = stale_runs(n)};
  for (auto& s : reply.stale)
    spdlog::info("node {}: run of job {} (generation {}) is stale: the node kills it", name,
                 s.job_id, s.generation);
  wake_.notify_all();
  return reply;
}

void Controller::reconcile(const std::string& node, const json& reported, const json& ops) {
  (void)reported;
  (void)ops;
  const Node& n = nodes_.at(node);
  // The runs the node has of the jobs' current generation (0: a node that predates
  // generations), and the jobs with an operation under way on the node, or done and
  // not yet reported.
  auto there = [&](const Job& j) {
    auto it = n.report_runs.find(j.job_id);
    return it != n.report_runs.end() && (it->second == 0 || it->second == j.generation);
  };
  auto busy = [&](int64_t id) { return n.report_ops.count(id) > 0; };
  double now = now_s();
  for (auto& [id, j] : jobs_) {
    if (!j.on_node() || j.nodes != node || launching_.count(id)) continue;
    if (n.down) {
      // Killed by the node DOWN (stale in this reply): recovered once gone from its list.
      if (!there(j) && !busy(id))
        recover(j, now, fmt::format("node {} DOWN ({}): run ended", node, n.reason));
      continue;
    }
    // A launch or restore whose answer was lost: the node runs the job, so it started.
    if (j.awaiting_node && there(j) && !busy(id)) {
      confirm_launch(j, "found running at the node's report");
      continue;
    }
    // Dumps still Creating although the node neither runs nor keeps a record of them
    // and no RPC of ours is in flight: the request never reached the node.
    if (!busy(id) && !ckpt_rpc_.count(id) && ckpt_busy_.count(id)) {
      std::vector<int64_t> stale;
      for (auto& c : ckpts_[id])
        if (c.status == CheckpointStatus::Creating && now - c.trigger_time > 30)
          stale.push_back(c.checkpoint_id);
      for (int64_t cid : stale)
        settle_checkpoint(id, cid, CheckpointStatus::Failed,
                          fmt::format("node {} has no record of this dump: it never started", node),
                          0, 0.0, "");
    }
    // A job the node does not know although it was placed there a while ago: its
    // launch never happened (the controller stopped during it) or the node lost it.
    // Recent starts are left alone: the report may predate them.
    if (there(j) || busy(id) || ckpt_busy_.count(id) || now - j.start_time < 30) continue;
    if (!j.end_request.empty()) {
      // Its end was asked for (cancel, requeue, time limit): it has ended, as asked.
      recover(j, now, fmt::format("node {} does not know run {}", node, j.generation));
      continue;
    }
    // The node came back without it (it restarted and its jobs died with it, before it
    // was silent long enough to be DOWN): a node failure like any other, so a --requeue
    // job is restored from its newest checkpoint, not left NODE_FAIL.
    spdlog::warn("job {}: node {} does not know it (generation {})", id, node, j.generation);
    recover(j, now,
            fmt::format("node {} does not know run {} (its jobs were lost)", node, j.generation));
  }
}

}  // namespace fsched::ctld
