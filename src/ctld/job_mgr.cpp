// The controller's job manager: submit, the job list, signal, cancel, hold and
// release, requeue, and what a job's end means.
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

Job& Controller::job_of(const std::string& id_text) {
  int64_t id = 0;
  auto [p, ec] = std::from_chars(id_text.data(), id_text.data() + id_text.size(), id);
  if (ec != std::errc{} || p != id_text.data() + id_text.size())
    throw RpcError(400, "Invalid job id specified");
  auto it = jobs_.find(id);
  if (it == jobs_.end()) throw RpcError(404, "Invalid job id specified");
  return it->second;
}

void Controller::check_owner(const Job& j, const proto::Caller& c) const {
  if (!c.is_root() && c.uid != j.uid)
    throw RpcError(403,
                   fmt::format("Access/permission denied: job {} belongs to {}", j.job_id, j.user));
}

const Checkpoint* Controller::last_checkpoint(const Job& j) const {
  auto it = ckpts_.find(j.job_id);
  return it == ckpts_.end() || it->second.empty() ? nullptr : &it->second.back();
}

nlohmann::json Controller::api(const Job& j) const { return api(j, last_checkpoint(j), cfg_); }

nlohmann::json Controller::api(const Job& j, const Checkpoint* c, const proto::Config& cfg) {
  double now = now_s();
  int64_t run = j.run_time_done + (j.state == JobState::Running && j.start_time > 0
                                       ? static_cast<int64_t>(now - j.start_time)
                                       : 0);
  json last = nullptr;
  if (c)
    last = {{"checkpoint_id", c->checkpoint_id}, {"time", c->trigger_time}, {"status", c->status}};
  int sig = j.exit_status > 128 && j.exit_status < 128 + 65 ? j.exit_status - 128 : 0;
  return {{"job_id", j.job_id},
          {"name", j.name},
          {"user", j.user},
          {"uid", j.uid},
          {"gid", j.gid},
          {"partition", j.partition},
          {"state", j.state},
          {"reason", j.reason},
          {"submit_time", j.submit_time},
          {"start_time", j.start_time},
          {"end_time", j.end_time},
          {"run_time", run},
          {"time_limit", j.time_limit},
          {"nodes", j.nodes},
          {"num_nodes", 1},
          {"cpus_per_task", j.cpus_per_task},
          {"ntasks", j.ntasks},
          {"num_cpus", j.num_cpus()},
          {"mem_mb", j.mem_mb},
          {"work_dir", j.work_dir},
          {"stdout", j.stdout_path},
          {"stderr", j.stderr_path},
          {"command",
           (cfg.slurmd_spool_dir / fmt::format("job{}", j.job_id) / "slurm_script").string()},
          {"argv", j.argv},
          {"checkpoint_interval", j.checkpoint_interval},
          {"checkpoint_dir", (cfg.checkpoint_dir / std::to_string(j.job_id)).string()},
          {"requeue", j.requeue},
          {"hold", j.hold},
          {"restarts", j.restarts},
          {"job_version", j.job_version},
          {"exit_code", fmt::format("{}:{}", sig ? 0 : j.exit_status, sig)},
          {"last_checkpoint", last},
          {"restore_from", j.restore_from},
          {"generation", j.generation},
          {"history", j.history},
          {"suspended_in_place", j.suspended_in_place},
          {"suspended_by", j.suspended_by},
          {"num_retained", j.num_retained}};
}

void Controller::note(Job& j, const std::string& what) {
  j.history.push_back(fmt::format("{} {}", proto::format_timestamp(now_s()), what));
  if (j.history.size() > kHistoryMax)
    j.history.erase(j.history.begin(), j.history.begin() + static_cast<std::ptrdiff_t>(
                                                               j.history.size() - kHistoryMax));
}

void Controller::unsuspend_in_place(Job& j, double now) {
  if (j.state != JobState::Suspended || !j.suspended_in_place) return;
  // The time suspended is not run time (nor time toward the time limit or the next
  // periodic checkpoint): the run's start moves forward by it.
  double paused = std::max(0.0, now - j.suspend_time);
  j.start_time += paused;
  if (j.next_checkpoint > 0) j.next_checkpoint += paused;
  // A preemption lent its CPUs: they are counted as the job's again (the caller, who
  // made room or is ending the run, knows the node may be over-full for a moment).
  if (j.suspended_by && !resuming_.erase(j.job_id))
    if (auto it = nodes_.find(j.nodes); it != nodes_.end()) it->second.alloc_cpus += j.num_cpus();
  j.state = JobState::Running;
  j.suspended_in_place = false;
  j.suspend_time = 0;
  j.suspended_by = 0;
}

void Controller::recover(Job& j, double now, const std::string& why) {
  unsuspend_in_place(j, now);
  int64_t id = j.job_id;
  std::string node = j.nodes;
  int64_t gen = j.generation;
  release(j, now);
  launching_.erase(id);
  launch_sent_.erase(id);
  restore_retries_.erase(id);
  j.awaiting_node = false;
  j.end_time = now;
  std::string req = j.end_request;
  j.end_request.clear();
  if (req == "cancel" || req == "timeout") {
    // What was asked for before the node failed: the run is over, as it would have been.
    j.state = req == "cancel" ? JobState::Cancelled : JobState::Timeout;
    j.restore_from = 0;
    note(j,
         fmt::format("run {} on {} ended by the node's failure ({}): {}", gen, node, why, j.state));
    spdlog::info("job {}: {} (run {} on {} ended: {})", id, j.state, gen, node, why);
  } else if (req == "requeue") {
    requeue_fresh(j);
    note(j, fmt::format("Requeued (scontrol requeue) from scratch: run {} on {} ended: {}", gen,
                        node, why));
    spdlog::info("job {}: requeued from scratch (run {} on {} ended: {})", id, gen, node, why);
  } else {
    spdlog::warn("job {}: run {} on {} ends NODE_FAIL: {}", id, gen, node, why);
    note(j, fmt::format("NodeFail: run {} on {}: {}", gen, node, why));
    j.state = JobState::NodeFail;
    j.reason = "NodeFail";
    j.exit_status = 0;
    j.restore_from = 0;
    j.recovery_restore = false;
    if (j.requeue) {
      // The newest Present checkpoint whose image is still there; schedule() restores
      // it (verified by the engine; launch_failed() falls back to older ones, then to a
      // start from scratch).
      int64_t chosen = 0;
      for (auto& c : ckpts_[id])
        if (c.status == CheckpointStatus::Present && !clear_if_missing(c)) chosen = c.checkpoint_id;
      j.state = JobState::Pending;
      j.reason = "NodeFail";  // schedule() says "Resources" while no node has room
      j.end_time = 0;
      if (chosen) {
        j.restore_from = chosen;
        j.recovery_restore = true;
        note(j,
             fmt::format("Requeued=NodeFail {}: to be restored from checkpoint {}", node, chosen));
        spdlog::info("job {}: requeued after the failure of {}: restore from checkpoint {}", id,
                     node, chosen);
      } else {
        requeue_fresh(j);
        j.reason = "NodeFail";
        note(j, fmt::format("Requeued=NodeFail {}: no Present checkpoint, from scratch", node));
        spdlog::info(
            "job {}: requeued after the failure of {}: no Present checkpoint, from "
            "scratch",
            id, node);
      }
    } else {
      spdlog::info("job {}: --no-requeue: stays NODE_FAIL", id);
    }
  }
  save(j);
  wake_.notify_all();
}

// ------------------------------------------------------------------ routes

SubmitRequest decode_submit(const nlohmann::json& b, const proto::Caller& caller,
                            const proto::Config& cfg) {
  using json = nlohmann::json;
  if (!b.is_object()) throw RpcError(400, "submit: expected a JSON object");
  Job j;
  std::string script = field<std::string>(b, "script", "");
  if (script.size() > proto::kMaxScriptBytes)
    throw RpcError(400, fmt::format("batch script is {} bytes, over the limit of {} bytes (4 MiB)",
                                    script.size(), proto::kMaxScriptBytes));
  if (script.rfind("#!", 0) != 0)
    throw RpcError(400,
                   "This does not look like a batch script.  The first line must start with #! "
                   "followed by the path to an interpreter.");
  j.uid = caller.uid;
  j.gid = caller.gid;
  j.user = user_name(caller.uid);
  j.name = field<std::string>(b, "name", "sbatch");
  j.work_dir = field<std::string>(b, "work_dir", "");
  if (j.work_dir.empty() || j.work_dir[0] != '/')
    throw RpcError(400, "work_dir must be an absolute path");
  j.argv = field<std::vector<std::string>>(b, "argv", {});
  int64_t cpus_per_task = proto::int_field(b, "cpus_per_task", 1, 1, kMaxCpus);
  int64_t ntasks = proto::int_field(b, "ntasks", 1, 1, kMaxCpus);
  // Both are at most 2^20, so their product is exact in 64 bits.
  if (cpus_per_task * ntasks > kMaxCpus)
    throw RpcError(400,
                   fmt::format("cpus_per_task × ntasks = {} × {} = {} CPUs, over the limit of {}",
                               cpus_per_task, ntasks, cpus_per_task * ntasks, kMaxCpus));
  j.cpus_per_task = static_cast<int>(cpus_per_task);
  j.ntasks = static_cast<int>(ntasks);
  j.mem_mb = static_cast<uint64_t>(proto::int_field(b, "mem_mb", 0, 0, kMaxMemMb));
  j.time_limit = proto::int_field(b, "time_limit", 0, 0, kMaxSeconds);
  j.checkpoint_interval = proto::int_field(b, "checkpoint_interval", 0, 0, kMaxSeconds);
  j.num_retained = static_cast<int>(proto::int_field(b, "num_retained", 0, 0, kMaxRetained));
  j.requeue = field<bool>(b, "requeue", true);
  j.hold = field<bool>(b, "hold", false);
  json env = field<json>(b, "env", json::object());
  if (!env.is_object()) throw RpcError(400, "env must be an object of strings");
  for (auto& [k, v] : env.items())
    if (!v.is_string())
      throw RpcError(400, fmt::format("env must be an object of strings: {} is {}", k,
                                      v.dump().substr(0, 40)));
  std::string part = field<std::string>(b, "partition", "");
  const proto::PartitionConf* p = part.empty() ? cfg.default_partition() : cfg.partition(part);
  if (!p) throw RpcError(400, fmt::format("invalid partition specified: {}", part));
  j.partition = p->name;
  if (p->max_time && j.time_limit > p->max_time)
    throw RpcError(
        400,
        fmt::format("Requested time limit is invalid (exceeds MaxTime of partition {})", p->name));
  if (!p->up) throw RpcError(400, fmt::format("Partition {} is down", p->name));
  bool fits = false;
  for (auto& n : p->nodes) {
    auto* nc = cfg.node(n);
    if (nc && nc->cpus >= j.num_cpus() && nc->real_memory >= j.mem_mb) fits = true;
  }
  if (!fits) throw RpcError(400, "Requested node configuration is not available");

  std::string out = field<std::string>(b, "stdout", "");
  std::string err = field<std::string>(b, "stderr", "");
  if (out.empty()) out = j.work_dir + "/slurm-%j.out";
  j.submit_time = now_s();
  j.state = JobState::Pending;
  j.reason = j.hold ? (caller.is_root() ? "JobHeldAdmin" : "JobHeldUser") : "None";
  return {std::move(j), std::move(script), std::move(env), std::move(out), std::move(err)};
}

nlohmann::json Controller::submit(const proto::Request& r) {
  SubmitRequest s = decode_submit(r.body, r.caller, cfg_);
  Job& j = s.job;
  const std::string &out = s.stdout_pattern, &err = s.stderr_pattern;
  Lock l(mu_);
  store_.submit(j, s.script, s.env, [&](Job& x) {
    x.stdout_path = expand_pattern(out, x);
    x.stderr_path = err.empty() ? x.stdout_path : expand_pattern(err, x);
  });
  jobs_[j.job_id] = j;
  spdlog::info("job {}: submitted by {} (uid {}), name {}, partition {}, checkpoint every {} s",
               j.job_id, j.user, j.uid, j.name, j.partition, j.checkpoint_interval);
  wake_.notify_all();
  json reply = {{"job_id", j.job_id}};
  // Accepted, but the option will do nothing: the submitter hears it (sbatch prints
  // each warning on stderr) rather than finding no checkpoints after the job died.
  if (j.checkpoint_interval > 0 && cfg_.checkpoint_type == "checkpoint/none")
    reply["warnings"] = {
        fmt::format("--checkpoint={} has no effect: checkpoints are disabled on this cluster "
                    "(CheckpointType = checkpoint/none)",
                    proto::format_duration(j.checkpoint_interval))};
  return reply;
}

std::string Controller::list_jobs(const proto::Request& r) {
  // ?state=PENDING,RUNNING narrows the list on the controller's side: squeue's
  // default view then costs nothing for the thousands of finished jobs.
  std::set<JobState> states;
  std::string q = r.query("state");
  for (size_t pos = 0; pos < q.size();) {
    size_t e = std::min(q.find(',', pos), q.size());
    if (e > pos) {
      std::string name = q.substr(pos, e - pos);
      auto st = proto::parse_enum<JobState>(name);
      if (!st)
        throw RpcError(400, fmt::format("unknown job state '{}' (expected one of {})", name,
                                        proto::enum_names<JobState>()));
      states.insert(*st);
    }
    pos = e + 1;
  }
  auto wanted = [&](const Job& j) { return states.empty() || states.count(j.state) > 0; };
  // Copied kListChunk jobs per hold of mu_ and written out after it: at 10,000 jobs
  // the whole text takes ~150 ms, which under mu_ would hold up heartbeats, scheduling
  // and every other request (a console polls the list every few seconds), and keep two
  // readers from using two cores. Each job's JSON is one moment's; the list is not one
  // moment's, as squeue's is not. One job's JSON tree at a time: the whole list as a
  // tree would cost the controller ~10x the text's size.
  constexpr size_t kListChunk = 256;
  std::string out = R"({"jobs":[)";
  bool first = true;
  std::vector<std::pair<Job, std::optional<Checkpoint>>> chunk;
  int64_t next = 0;  // the smallest job id not yet looked at
  for (bool more = true; more;) {
    chunk.clear();
    {
      Lock l(mu_);
      auto it = jobs_.lower_bound(next);
      for (; it != jobs_.end() && chunk.size() < kListChunk; ++it) {
        if (!wanted(it->second)) continue;
        const Checkpoint* c = last_checkpoint(it->second);
        chunk.emplace_back(it->second, c ? std::optional(*c) : std::nullopt);
      }
      more = it != jobs_.end();
      if (more) next = it->first;
    }
    for (auto& [j, c] : chunk) {  // cfg_ does not change after start
      if (!first) out += ',';
      first = false;
      out += api(j, c ? &*c : nullptr, cfg_).dump();
    }
  }
  out += "]}";
  return out;
}

nlohmann::json Controller::show_job(const proto::Request& r) {
  Lock l(mu_);
  return api(job_of(r.params.at(0)));
}

nlohmann::json Controller::signal_job(const proto::Request& r) {
  Lock l(mu_);
  Job& j = job_of(r.params.at(0));
  check_owner(j, r.caller);
  int sig = static_cast<int>(proto::int_field(r.body, "signal", SIGTERM, 1, 64));
  if (j.state != JobState::Running)
    throw RpcError(409, fmt::format("Job {} is not running (state {})", j.job_id, j.state));
  spdlog::info("job {}: signal {} requested by uid {}", j.job_id, sig, r.caller.uid);
  terminate(j, sig, false);
  return json::object();
}

nlohmann::json Controller::suspend_in_place(int64_t id, bool stop, const proto::Caller& who,
                                            int64_t by) {
  std::string node;
  int64_t gen = 0;
  {
    Lock l(mu_);
    Job& j = jobs_.at(id);
    // As for a checkpoint: a job placed a moment ago waits for its start's answer
    // (bounded by BatchStartTimeout) rather than failing on a race the user cannot see.
    if (stop && j.state == JobState::Running && launching_.count(id))
      wake_.wait_for(l, std::chrono::seconds(cfg_.batch_start_timeout),
                     [&] { return stopping_ || !launching_.count(id); });
    if (stop && (j.state != JobState::Running || launching_.count(id) || j.awaiting_node ||
                 !j.end_request.empty()))
      throw RpcError(409, fmt::format("Job {} is not running (state {}{})", id, j.state,
                                      !j.end_request.empty() ? ", ending"
                                      : launching_.count(id) || j.awaiting_node
                                          ? ", its start not yet confirmed by its node"
                                          : ""));
    if (!stop && !(j.state == JobState::Suspended && j.suspended_in_place))
      throw RpcError(409, fmt::format("Job {} is not suspended in place", id));
    // No dump while the run is frozen or thawed (the engine freezes the same cgroup).
    if (ckpt_busy_.count(id))
      throw RpcError(409, fmt::format("job {}: a checkpoint (or another suspend or resume) is in "
                                      "progress",
                                      id));
    ckpt_busy_.insert(id);
    node = j.nodes;
    gen = j.generation;
  }
  std::string error;
  int status = 502;
  auto post = [&](bool s) {
    node_rpc_->post(node, "/v1/node/suspend",
                    proto::SuspendRequest{.job_id = id, .generation = gen, .stop = s}, 30);
  };
  try {
    post(stop);
  } catch (const RpcError& e) {
    error = e.what();
    status = e.status();
  } catch (const std::exception& e) {
    error = e.what();
  }
  if (!error.empty() && stop) {
    // It may have frozen before the answer was lost: a job the books say runs must run.
    try {
      post(false);
    } catch (const std::exception& e) {
      spdlog::warn("job {}: thaw after a failed suspend on {}: {}", id, node, e.what());
    }
  }
  Lock l(mu_);
  ckpt_busy_.erase(id);
  Job& j = jobs_.at(id);
  if (!error.empty()) {
    // A preemption's thaw that failed: its CPUs are lent again until the next try.
    if (!stop && resuming_.erase(id))
      if (auto it = nodes_.find(j.nodes); it != nodes_.end())
        it->second.alloc_cpus = std::max(0, it->second.alloc_cpus - j.num_cpus());
    throw RpcError(status, fmt::format("Job {} not {}: node {}: {}", id,
                                       stop ? "suspended" : "resumed", node, error));
  }
  // The run may have ended or moved during the RPC (its node set DOWN, a cancel): its
  // books are settled already; a frozen stale run is killed by the node's stale list.
  if (j.generation != gen || j.nodes != node ||
      (stop ? j.state != JobState::Running
            : !(j.state == JobState::Suspended && j.suspended_in_place)))
    throw RpcError(409, fmt::format("Job {} changed while it was being {} (now {})", id,
                                    stop ? "suspended" : "resumed", j.state));
  double now = now_s();
  if (stop) {
    j.state = JobState::Suspended;
    j.suspended_in_place = true;
    j.suspend_time = now;
    j.suspended_by = by;
    if (by) {
      Node& n = nodes_.at(node);
      n.alloc_cpus = std::max(0, n.alloc_cpus - j.num_cpus());
      note(j, fmt::format("preempted by job {} (SUSPEND): suspended in place on {}, its CPUs lent "
                          "to job {}, its memory kept",
                          by, node, by));
    } else {
      note(j, fmt::format("suspended in place on {} by {} (frozen, CPUs and memory kept)", node,
                          user_name(who.uid)));
    }
  } else {
    unsuspend_in_place(j, now);
    note(j, fmt::format("resumed in place on {} by {}", node, user_name(who.uid)));
  }
  spdlog::info("job {}: {} in place on {} by uid {}", id, stop ? "suspended" : "resumed", node,
               who.uid);
  save(j);
  wake_.notify_all();
  return api(j);
}

void Controller::end_suspended_in_place(Job& j, const std::string& request, uid_t by) {
  // Its frozen processes cannot act on SIGTERM: thawed first, then ended as a running
  // job is.
  unsuspend_in_place(j, now_s());
  j.end_request = request;
  save(j);
  spdlog::info("job {}: {} requested by uid {} while suspended in place: thaw, SIGTERM", j.job_id,
               request, by);
  terminate(j, SIGTERM, true, true);
}

void Controller::terminate(const Job& j, int signal, bool escalate, bool thaw_first) {
  std::string node = j.nodes;
  int64_t id = j.job_id, gen = j.generation;
  int wait = escalate ? cfg_.kill_wait : -1;
  spawn([this, node, id, gen, signal, wait, thaw_first] {
    if (thaw_first) {
      try {
        node_rpc_->post(node, "/v1/node/suspend",
                        proto::SuspendRequest{.job_id = id, .generation = gen, .stop = false}, 30);
      } catch (const std::exception& e) {
        // SIGKILL ends frozen processes too: an escalation still ends the run.
        spdlog::warn("job {}: thaw on node {} failed: {}", id, node, e.what());
      }
    }
    try {
      node_rpc_->post(node, "/v1/node/signal",
                      proto::SignalRequest{.job_id = id, .signal = signal, .kill_wait = wait}, 30);
    } catch (const std::exception& e) {
      spdlog::warn("job {}: signal {} on node {} failed: {}", id, signal, node, e.what());
    }
  });
}

nlohmann::json Controller::cancel_job(const proto::Request& r) {
  Lock l(mu_);
  Job& j = job_of(r.params.at(0));
  check_owner(j, r.caller);
  if (j.state == JobState::Suspended && j.suspended_in_place) {
    end_suspended_in_place(j, "cancel", r.caller.uid);
    return json::object();
  }
  if (j.state == JobState::Pending || j.state == JobState::Suspended) {
    // Nothing runs: its checkpoints stay, for scontrol checkpoint restart.
    spdlog::info("job {}: cancelled while {} by uid {}", j.job_id,
                 j.state == JobState::Pending ? "pending" : "suspended", r.caller.uid);
    j.state = JobState::Cancelled;
    j.reason = "None";
    j.end_time = now_s();
    j.restore_from = 0;
    save(j);
  } else if (j.state == JobState::Running) {
    j.end_request = "cancel";
    save(j);
    spdlog::info("job {}: cancel requested by uid {}: SIGTERM, SIGKILL after {} s", j.job_id,
                 r.caller.uid, cfg_.kill_wait);
    terminate(j, SIGTERM, true);
  } else {
    throw RpcError(409, fmt::format("Job/step already completing or completed (job {} is {})",
                                    j.job_id, j.state));
  }
  return json::object();
}

nlohmann::json Controller::hold_job(const proto::Request& r, bool hold) {
  Lock l(mu_);
  Job& j = job_of(r.params.at(0));
  check_owner(j, r.caller);
  if (j.state != JobState::Pending)
    throw RpcError(409, fmt::format("Job {} is not pending (state {})", j.job_id, j.state));
  if (!hold && j.reason == "JobHeldAdmin" && !r.caller.is_root())
    throw RpcError(403, fmt::format("Access/permission denied: job {} was held by an administrator",
                                    j.job_id));
  j.hold = hold;
  if (hold)
    j.reason = r.caller.is_root() ? "JobHeldAdmin" : "JobHeldUser";
  else if (j.reason == "JobHeldUser" || j.reason == "JobHeldAdmin")
    j.reason = "None";
  save(j);
  spdlog::info("job {}: {} by uid {}", j.job_id, hold ? "held" : "released", r.caller.uid);
  wake_.notify_all();
  return json::object();
}

void Controller::requeue_fresh(Job& j) {
  j.state = JobState::Pending;
  j.reason = "None";
  j.start_time = 0;  // a new run from scratch: the old start no longer describes it
  j.restarts++;
  j.job_version++;
  j.restore_from = 0;
  j.run_time_done = 0;
  j.end_time = 0;
}

nlohmann::json Controller::requeue_job(const proto::Request& r) {
  Lock l(mu_);
  Job& j = job_of(r.params.at(0));
  check_owner(j, r.caller);
  if (!j.requeue)
    throw RpcError(409, fmt::format("Job {} was submitted with --no-requeue", j.job_id));
  if (j.state == JobState::Pending)
    throw RpcError(409, fmt::format("Job {} is pending already", j.job_id));
  if (j.state == JobState::Suspended && j.suspended_in_place) {
    end_suspended_in_place(j, "requeue", r.caller.uid);
    return json::object();
  }
  if (j.state == JobState::Suspended) {
    // Nothing runs: back to the queue at once, from scratch.
    requeue_fresh(j);
    note(j, "Requeued (scontrol requeue) from scratch while suspended");
    save(j);
    spdlog::info("job {}: requeued from scratch while suspended, by uid {}", j.job_id,
                 r.caller.uid);
    wake_.notify_all();
    return json::object();
  }
  if (j.state != JobState::Running)
    throw RpcError(409, fmt::format("Job {} has already finished ({}): only a running or pending "
                                    "job can be requeued; use scontrol checkpoint restart to run "
                                    "it again from a checkpoint",
                                    j.job_id, j.state));
  if (!j.end_request.empty() && j.end_request != "requeue")
    throw RpcError(409,
                   fmt::format("Job {} is already ending ({} requested)", j.job_id, j.end_request));
  // The run ends (SIGTERM, SIGKILL after KillWait); node_job_ended() then puts the job
  // back in the queue from scratch. If the node is silent, its DOWN does (recover()).
  j.end_request = "requeue";
  save(j);
  spdlog::info("job {}: requeue (from scratch) requested by uid {}: SIGTERM, SIGKILL after {} s",
               j.job_id, r.caller.uid, cfg_.kill_wait);
  terminate(j, SIGTERM, true);
  return json::object();
}

void Controller::end_if_requested(const Job& j) {
  // A cancel, requeue or time limit that came while the start was in flight signalled a
  // job the node did not know yet: it is signalled again now that it runs.
  if (j.end_request.empty()) return;
  spdlog::info("job {}: {} requested while it started: SIGTERM now, SIGKILL after {} s", j.job_id,
               j.end_request, cfg_.kill_wait);
  terminate(j, SIGTERM, true);
}

void Controller::release(Job& j, double now) {
  if (auto it = nodes_.find(j.nodes); it != nodes_.end()) {
    it->second.alloc_cpus = std::max(0, it->second.alloc_cpus - j.num_cpus());
    it->second.alloc_memory =
        it->second.alloc_memory >= j.mem_mb ? it->second.alloc_memory - j.mem_mb : 0;
  }
  // start_time stays: scontrol show job and squeue %S show when a finished job last
  // started. Callers release only RUNNING jobs and schedule() sets a new start, so
  // this run is counted once.
  if (j.start_time > 0) j.run_time_done += static_cast<int64_t>(std::llround(now - j.start_time));
}

nlohmann::json Controller::node_job_ended(const proto::Request& r) {
  if (!r.caller.is_root()) throw RpcError(403, "only root (fschedd) may report for a node");
  int64_t id = proto::int_field(r.body, "job_id", 0, 0, kMaxId);
  int code = static_cast<int>(proto::int_field(r.body, "exit_status", 0, 0, 65535));
  bool lost = field<bool>(r.body, "lost", false);
  std::string node = field<std::string>(r.body, "name", "");
  int64_t gen = proto::int_field(r.body, "generation", 0, 0, kMaxId);
  Lock l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return json::object();
  Job& j = it->second;
  // A report about a run that is already over (a repeated report, one from a node the
  // job has since left, or of an older generation) changes nothing.
  if (!j.on_node() || j.nodes != node || (gen != 0 && gen != j.generation)) return json::object();
  // A run suspended in place that ended anyway (killed on the node): it ran until then.
  if (j.state == JobState::Suspended) unsuspend_in_place(j, now_s());
  // A run that ended before its start's answer was read (a job that exits at once):
  // fschedd keeps an unaccepted report in its spool and sends it again, so the end is
  // settled once the start is, not dropped.
  if (launching_.count(id))
    throw RpcError(409, fmt::format("job {}: its start on {} is not confirmed yet; report its end "
                                    "again",
                                    id, node));
  if (auto nit = nodes_.find(node);
      nit != nodes_.end() && nit->second.down && (lost || code != 0)) {
    // Killed because its node was set DOWN: a node failure, recovered as such.
    recover(
        j, now_s(),
        fmt::format("node {} DOWN ({}): run ended with status {}", node, nit->second.reason, code));
    return json::object();
  }
  if (lost) {
    // The node restarted and found the run's processes gone (they died with it): a
    // node failure, recovered as such (a --requeue job is restored from its newest
    // checkpoint), whether or not the node was silent long enough to be DOWN.
    recover(
        j, now_s(),
        fmt::format("node {} lost run {} (its processes died with the node)", node, j.generation));
    return json::object();
  }
  if (j.awaiting_node) {
    // It started (and ended) after all.
    j.awaiting_node = false;
    j.restore_from = 0;
    launch_sent_.erase(id);
  }
  double now = now_s();
  double started = j.start_time;
  release(j, now);
  j.exit_status = code;
  j.end_time = now;
  std::string req = j.end_request;
  j.end_request.clear();
  if (req == "requeue") {
    note(j, fmt::format("Requeued (scontrol requeue) from scratch: run {} on {} ended",
                        j.generation, node));
    requeue_fresh(j);
  } else if (req == "cancel") {
    j.state = JobState::Cancelled;
  } else if (req == "timeout") {
    j.state = JobState::Timeout;
  } else {
    j.state = code == 0 ? JobState::Completed : JobState::Failed;
    j.reason = code == 0 ? "None" : "NonZeroExitCode";
  }
  save(j);
  spdlog::info("job {}: ended on {} with status {} after {:.1f} s: {}", id, node, code,
               now - started, j.state);
  wake_.notify_all();
  return json::object();
}

// ------------------------------------------------------------------ scheduling

}  // namespace fsched::ctld
