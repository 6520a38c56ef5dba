// The controller's scheduler: placing pending jobs on nodes, the launch and restore
// RPCs and their failures (failure classes, fallback, retries), and the periodic
// duties (due checkpoints, time limits, dead nodes).
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

void Controller::confirm_launch(Job& j, const std::string& how) {
  j.awaiting_node = false;
  restore_retries_.erase(j.job_id);
  launch_sent_.erase(j.job_id);
  if (j.restore_from) {
    spdlog::info("job {}: restored from checkpoint {} on {} ({})", j.job_id, j.restore_from,
                 j.nodes, how);
    note(j, fmt::format("restored from checkpoint {} on {} (run {}, {})", j.restore_from, j.nodes,
                        j.generation, how));
    j.restore_from = 0;
    j.recovery_restore = false;
  } else {
    spdlog::info("job {}: running on {} ({})", j.job_id, j.nodes, how);
  }
  save(j);
  end_if_requested(j);
  wake_.notify_all();
}

void Controller::schedule() {
  // Higher PriorityTier first, then in submission order (Slurm's partition priority).
  std::vector<Job*> order;
  for (auto& [id, j] : jobs_)
    if (j.state == JobState::Pending && !j.hold && j.reason != "Vacated" && !launching_.count(id))
      order.push_back(&j);
  std::stable_sort(order.begin(), order.end(),
                   [&](const Job* a, const Job* b) { return tier_of(*a) > tier_of(*b); });
  for (Job* jp : order) {
    Job& j = *jp;
    const int64_t id = j.job_id;
    // A restore that failed for a passing reason waits a while, then avoids the node
    // it failed on if another one fits.
    const RestoreRetry* retry = nullptr;
    if (auto rit = restore_retries_.find(id);
        rit != restore_retries_.end() && j.restore_from == rit->second.checkpoint_id)
      retry = &rit->second;
    if (retry && now_s() < retry->not_before) continue;
    const proto::PartitionConf* p = cfg_.partition(j.partition);
    Node* best = nullptr;
    for (bool avoid : {true, false}) {
      for (auto& name : p ? p->nodes : std::vector<std::string>{}) {
        Node& n = nodes_.at(name);
        if (avoid && retry && name == retry->avoid_node) continue;
        // A node emptied by preemption is kept for its preemptor (preempt()).
        if (std::any_of(reserved_.begin(), reserved_.end(),
                        [&](const auto& r) { return r.second == name && r.first != id; }))
          continue;
        if (!node_up(n) || n.drain || n.unconfirmed_at > n.report_time ||
            n.cpus - n.alloc_cpus < j.num_cpus() || n.real_memory - n.alloc_memory < j.mem_mb)
          continue;
        // Least loaded first, so jobs spread over the nodes.
        if (!best || n.alloc_cpus < best->alloc_cpus) best = &n;
      }
      if (best || !retry) break;
    }
    if (!best) {
      if (j.reason != "Resources") {
        j.reason = "Resources";
        save(j);
      }
      continue;
    }
    best->alloc_cpus += j.num_cpus();
    best->alloc_memory += j.mem_mb;
    j.nodes = best->name;
    j.state = JobState::Running;
    j.reason = "None";
    j.start_time = now_s();
    if (j.restore_from) {
      j.restarts++;
      j.job_version++;
    }
    // A new run: reports about earlier ones are stale from now on.
    j.generation++;
    j.next_checkpoint =
        j.checkpoint_interval ? j.start_time + static_cast<double>(j.checkpoint_interval) : 0;
    // Stored before the RPC: a controller restarted before the node's answer came
    // then knows to wait for the node's report rather than take the job as started.
    j.awaiting_node = true;
    save(j);
    launching_[id] = j.generation;
    launch_sent_[id] = j.start_time;
    spdlog::info("job {}: {} on {} (run {})", id,
                 j.restore_from ? fmt::format("restoring from checkpoint {}", j.restore_from)
                                : std::string("starting"),
                 best->name, j.generation);
    int64_t jid = id;
    spawn([this, jid] { launch(jid); });
  }
}

void Controller::launch(int64_t id) {
  proto::LaunchRequest req;
  std::string node, dir;
  int64_t from = 0, gen = 0;
  {
    Lock l(mu_);
    Job& j = jobs_.at(id);
    gen = j.generation;
    auto [script, env] = store_.script(id);
    env["SLURM_JOB_ID"] = env["SLURM_JOBID"] = std::to_string(id);
    env["SLURM_JOB_NAME"] = j.name;
    env["SLURM_JOB_USER"] = j.user;
    env["SLURM_JOB_UID"] = std::to_string(j.uid);
    env["SLURM_JOB_GID"] = std::to_string(j.gid);
    env["SLURM_JOB_PARTITION"] = j.partition;
    env["SLURM_SUBMIT_DIR"] = j.work_dir;
    env["SLURM_JOB_NODELIST"] = env["SLURM_NODELIST"] = j.nodes;
    env["SLURMD_NODENAME"] = j.nodes;
    env["SLURM_JOB_NUM_NODES"] = env["SLURM_NNODES"] = "1";
    env["SLURM_CPUS_ON_NODE"] = std::to_string(j.num_cpus());
    env["SLURM_NTASKS"] = env["SLURM_NPROCS"] = std::to_string(j.ntasks);
    env["SLURM_CPUS_PER_TASK"] = std::to_string(j.cpus_per_task);
    env["SLURM_CLUSTER_NAME"] = cfg_.cluster_name;
    env["SLURM_RESTART_COUNT"] = std::to_string(j.restarts);
    env["ENVIRONMENT"] = "BATCH";
    if (j.mem_mb) env["SLURM_MEM_PER_NODE"] = std::to_string(j.mem_mb);
    if (j.checkpoint_interval) env["SLURM_CHECKPOINT"] = std::to_string(j.checkpoint_interval);
    req = {.job_id = id,
           .name = j.name,
           .user = j.user,
           .uid = j.uid,
           .gid = j.gid,
           .work_dir = j.work_dir,
           .stdout_path = j.stdout_path,
           .stderr_path = j.stderr_path,
           .argv = j.argv,
           .script = script,
           .generation = j.generation,
           .issued = now_s()};
    // The submitted environment is an object of strings (anything else was never
    // passed to the job: fschedd always dropped it).
    for (auto& [k, v] : env.items())
      if (v.is_string()) req.env[k] = v.get<std::string>();
    node = j.nodes;
    from = j.restore_from;
    if (from) {
      for (auto& c : ckpts_[id])
        if (c.checkpoint_id == from) dir = c.location;
      req.restore_dir = dir;
    }
  }
  std::string error;
  std::optional<FailureClass> failure;
  bool answered = true;
  try {
    node_rpc_->post(node, from ? "/v1/node/restore" : "/v1/node/launch", req,
                    cfg_.batch_start_timeout + 600);
  } catch (const RpcError& e) {
    error = e.what();
    failure = e.failure();
    // 409: the node has this job already, or an operation on it under way. Starting
    // it elsewhere or again could run it twice: its reports decide instead.
    answered = e.status() != 409;
  } catch (const std::exception& e) {
    error = e.what();
    answered = false;
  }
  Lock l(mu_);
  Job& j = jobs_.at(id);
  if (auto it = launching_.find(id); it != launching_.end() && it->second == gen)
    launching_.erase(it);
  wake_.notify_all();  // a checkpoint request may be waiting for this answer
  if (j.generation != gen || j.state != JobState::Running || j.nodes != node) {
    // The run was given up meanwhile (BatchStartTimeout, its node DOWN): if the node
    // started it after all, the heartbeat reply's stale list has it killed.
    spdlog::info("job {}: answer to the {} of run {} on {} ignored: that run was abandoned ({})",
                 id, from ? "restore" : "launch", gen, node, error.empty() ? "ok" : error);
    return;
  }
  if (!error.empty() && !answered) {
    // fschedd died or the connection broke: the job may be running there. It stays
    // RUNNING on that node, and the checkpoint it restores stays Present, until the
    // node says what happened (op_done, or its job list at registration).
    spdlog::warn("job {}: no answer to the {} on {} ({}); waiting for the node's report", id,
                 from ? "restore" : "launch", node, error);
    j.awaiting_node = true;
    save(j);
    return;
  }
  if (error.empty()) {
    j.awaiting_node = false;
    restore_retries_.erase(id);
    launch_sent_.erase(id);
    save(j);
    if (from) {
      spdlog::info("job {}: restored from checkpoint {} on {} (restart {}, job version {})", id,
                   from, node, j.restarts, j.job_version);
      note(j, fmt::format("restored from checkpoint {} on {} (run {})", from, node, gen));
      j.restore_from = 0;
      j.recovery_restore = false;
      save(j);
    } else {
      spdlog::info("job {}: running on {}", id, node);
    }
    end_if_requested(j);
    wake_.notify_all();
    return;
  }
  launch_failed(j, error, failure);
}

void Controller::launch_failed(Job& j, const std::string& why, std::optional<FailureClass> failure,
                               bool node_silent) {
  double now = now_s();
  j.awaiting_node = false;
  launch_sent_.erase(j.job_id);
  release(j, now);
  j.run_time_done = std::max<int64_t>(0, j.run_time_done);
  if (j.restore_from) {
    j.restarts--;
    j.job_version--;
    int64_t failed = j.restore_from;
    // Unclassified (an older node, no answer to read) counts as transient: not knowing
    // better, a failure must not condemn an image.
    FailureClass cls = failure.value_or(FailureClass::kTransient);
    spdlog::warn("job {}: restore from checkpoint {} on {} failed ({}): {}", j.job_id, failed,
                 j.nodes, to_string(cls), why);
    std::string reason;
    if (cls == FailureClass::kImage || cls == FailureClass::kUnsupported) {
      // The image is bad or holds what the engine cannot restore: the same everywhere.
      reason = fmt::format("{}{} failure: {}", kRestoreFailedPrefix, to_string(cls), why);
    } else {
      // Transient (also usage: a command line the node got wrong is no fault of the
      // image): the checkpoint stays Present and the restore is tried again, first on
      // another node, after a pause; after kMaxTransientRestores the image is given up.
      RestoreRetry& rr = restore_retries_[j.job_id];
      if (rr.checkpoint_id != failed) rr = RestoreRetry{.checkpoint_id = failed};
      if (!node_silent) ++rr.failures;
      if (rr.failures < kMaxTransientRestores) {
        rr.avoid_node = j.nodes;
        rr.not_before = now + kRestoreRetryDelayS * rr.failures;
        spdlog::info(
            "job {}: checkpoint {} stays Present; restore attempt {} of {} in {:.0f} s, not on {} "
            "if "
            "another node fits",
            j.job_id, failed, rr.failures + 1, kMaxTransientRestores, rr.not_before - now,
            rr.avoid_node);
        j.state = JobState::Pending;
        j.reason = "RestoreRetry";
        note(j,
             fmt::format("restore from checkpoint {} on {} failed ({}): {}; retry {} of {}", failed,
                         j.nodes, to_string(cls), why, rr.failures + 1, kMaxTransientRestores));
        save(j);
        wake_.notify_all();
        return;
      }
      reason = fmt::format(
          "{}{} transient failures in a row, giving up on this checkpoint; the last: {}",
          kRestoreFailedPrefix, rr.failures, why);
      restore_retries_.erase(j.job_id);
    }
    int64_t previous = 0;
    for (auto& c : ckpts_[j.job_id]) {
      if (c.checkpoint_id == failed) {
        c.status = CheckpointStatus::Failed;
        c.reason = reason;
        save(c);
        // The image stays on disk although it is of no more use to the job: the
        // class is the engine's judgement, and an administrator may want to see what
        // broke it (or restore it by hand if the judgement was wrong); `scontrol
        // checkpoint delete` removes it.
      } else if (c.status == CheckpointStatus::Present && c.checkpoint_id < failed) {
        previous = c.checkpoint_id;
      }
    }
    if (previous) {
      spdlog::info("job {}: falling back to checkpoint {}", j.job_id, previous);
      note(j, fmt::format("restore from checkpoint {} failed ({}); falling back to checkpoint {}",
                          failed, reason.substr(kRestoreFailedPrefix.size()), previous));
      j.restore_from = previous;
      j.state = JobState::Pending;
      j.reason = "None";
    } else if (j.recovery_restore) {
      // Recovery after a node failure: no image restores, so the job starts over.
      spdlog::info("job {}: no Present checkpoint left: starting from scratch", j.job_id);
      note(j, fmt::format("restore from checkpoint {} failed ({}); no Present checkpoint left: "
                          "from scratch",
                          failed, reason.substr(kRestoreFailedPrefix.size())));
      j.recovery_restore = false;
      requeue_fresh(j);
      j.reason = "NodeFail";
    } else {
      j.restore_from = 0;
      j.state = JobState::Failed;
      j.reason = "RestoreFailed";
      j.end_time = now;
    }
  } else if (!node_silent && ++j.launch_failures >= 3) {
    spdlog::error("job {}: launch on {} failed ({}), giving up after 3 tries", j.job_id, j.nodes,
                  why);
    j.state = JobState::Failed;
    j.reason = "LaunchFailed";
    j.end_time = now;
  } else {
    spdlog::warn("job {}: launch on {} failed: {}; will retry", j.job_id, j.nodes, why);
    j.state = JobState::Pending;
    j.reason = "LaunchFailed";
  }
  save(j);
  wake_.notify_all();
}

void Controller::check_batch_start(double now) {
  for (auto it = launch_sent_.begin(); it != launch_sent_.end();) {
    int64_t id = it->first;
    double sent = it->second;
    ++it;  // launch_failed() erases the entry
    auto jit = jobs_.find(id);
    if (jit == jobs_.end()) {
      launch_sent_.erase(id);
      continue;
    }
    Job& j = jit->second;
    if (j.state != JobState::Running || !j.awaiting_node) {
      launch_sent_.erase(id);
      continue;
    }
    if (now - sent < cfg_.batch_start_timeout) continue;
    // Signs of life since it was sent: the node's report (after the sending) shows the
    // operation under way (a restore of a large image takes its time) or the run.
    const Node& n = nodes_.at(j.nodes);
    if (n.report_time > sent) {
      if (n.report_ops.count(id)) continue;
      auto rit = n.report_runs.find(id);
      if (rit != n.report_runs.end() && (rit->second == 0 || rit->second == j.generation)) continue;
    }
    std::string node = j.nodes;
    bool restore = j.restore_from != 0;
    // Not heard from since: the node's failure (cut off, or dying), not the job's.
    bool silent = n.report_time <= sent;
    std::string why = fmt::format(
        "{} not confirmed running within BatchStartTimeout ({} s) and no sign of it "
        "at {}",
        restore ? "restore" : "launch", cfg_.batch_start_timeout, node);
    spdlog::warn("job {}: run {}: {}: abandoned (stale), retried elsewhere if a node fits", id,
                 j.generation, why);
    note(j, fmt::format("run {} on {}: {}", j.generation, node, why));
    launching_.erase(id);  // the RPC's answer, if it ever comes, is for a stale run
    // No job goes there again before the node is heard from.
    if (silent) nodes_.at(node).unconfirmed_at = now;
    launch_failed(j, why, FailureClass::kTransient, silent);
    if (!restore && j.state == JobState::Pending) {
      // A launch has no checkpoint to count retries by: avoid the node all the same.
      restore_retries_[id] = RestoreRetry{.checkpoint_id = 0, .failures = 0, .avoid_node = node};
    }
  }
}

void Controller::periodic() {
  double now = now_s();
  for (auto& [id, j] : jobs_) {
    if (j.state != JobState::Running || launching_.count(id) || !j.end_request.empty() ||
        j.awaiting_node)
      continue;
    if (j.time_limit > 0 &&
        j.run_time_done + (now - j.start_time) >= static_cast<double>(j.time_limit)) {
      spdlog::info("job {}: time limit of {} s reached", id, j.time_limit);
      j.end_request = "timeout";
      save(j);
      terminate(j, SIGTERM, true);
      continue;
    }
    if (j.checkpoint_interval > 0 && j.next_checkpoint > 0 && now >= j.next_checkpoint &&
        !ckpt_busy_.count(id)) {
      if (auto nit = nodes_.find(j.nodes); nit != nodes_.end() && !node_up(nit->second)) {
        // NOT_RESPONDING: the dump could not be asked for; the next due one may.
        while (j.next_checkpoint <= now)
          j.next_checkpoint += static_cast<double>(j.checkpoint_interval);
        save(j);
        continue;
      }
      // Due points stay on the start + k*interval grid; missed ones are skipped.
      while (j.next_checkpoint <= now)
        j.next_checkpoint += static_cast<double>(j.checkpoint_interval);
      save(j);
      if (std::string why = too_busy(j.nodes); !why.empty()) {
        skip_checkpoint(j, why);
        continue;
      }
      int64_t jid = id;
      spawn([this, jid] {
        try {
          run_checkpoint(jid, CheckpointSource::Periodic, "", nullptr);
        } catch (const std::exception& e) {
          spdlog::warn("job {}: periodic checkpoint not taken: {}", jid, e.what());
        }
      });
    }
  }
}

}  // namespace fsched::ctld
