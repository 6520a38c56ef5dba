// The controller's checkpoint manager: periodic, manual and vacate checkpoints,
// their outcome, retention, restart from a checkpoint, list and delete, and the
// load-aware skipping of periodic checkpoints.
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
#include <set>

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/failure.h"
#include "proto/json_number.h"
#include "proto/timefmt.h"
#include "proto/node_requests.h"
#include "ctld/controller_impl.h"

namespace fsched::ctld {

using proto::RpcError;

namespace {
// A checkpoint's description when its request gave none.
std::string_view default_description(CheckpointSource s) {
  switch (s) {
    case CheckpointSource::Periodic:
      return "periodic checkpoint";
    case CheckpointSource::Manual:
      return "created during running";
    case CheckpointSource::Vacate:
      return "created when the job was vacated";
    case CheckpointSource::Drain:
      return "created when its node was drained";
    case CheckpointSource::Suspend:
      return "created when the job was suspended";
    case CheckpointSource::Preempt:
      return "created when the job was preempted";
  }
  return "";
}
}  // namespace

// Back to the queue, to start again from scratch (seed 002: requeue is not restore).
std::string Controller::too_busy(const std::string& node) const {
  if (!cfg_.load_aware) return {};
  auto it = nodes_.find(node);
  if (it == nodes_.end()) return {};
  const Node& n = it->second;
  if (n.cpu_util > cfg_.load_threshold_cpu)
    return fmt::format("CPU utilization {:.2f} > CRIU_LoadThresholdCPU {:.2f}", n.cpu_util,
                       cfg_.load_threshold_cpu);
  if (n.io_wait > cfg_.load_threshold_io)
    return fmt::format("I/O wait {:.2f} > CRIU_LoadThresholdIO {:.2f}", n.io_wait,
                       cfg_.load_threshold_io);
  if (n.mem_util > cfg_.load_threshold_memory)
    return fmt::format("memory use {:.2f} > CRIU_LoadThresholdMemory {:.2f}", n.mem_util,
                       cfg_.load_threshold_memory);
  return {};
}

void Controller::skip_checkpoint(Job& j, const std::string& why) {
  Checkpoint c;
  c.checkpoint_id = ++j.last_checkpoint_id;
  c.job_id = j.job_id;
  c.source = CheckpointSource::Periodic;
  c.description = "periodic checkpoint";
  c.trigger_time = c.completion_time = now_s();
  c.status = CheckpointStatus::Skipped;
  c.reason = fmt::format("load-aware: node {}: {}", j.nodes, why);
  c.job_version = j.job_version;
  ckpts_[j.job_id].push_back(c);
  save(j);
  save(c);
  spdlog::info("job {}: checkpoint {} Skipped ({})", j.job_id, c.checkpoint_id, c.reason);
}

nlohmann::json Controller::checkpoint_job(const proto::Request& r, CheckpointSource source) {
  int64_t id;
  {
    Lock l(mu_);
    id = job_of(r.params.at(0)).job_id;
  }
  std::string desc = field<std::string>(r.body, "description", "");
  Checkpoint c = run_checkpoint(id, source, desc, &r.caller);
  if (c.status != CheckpointStatus::Present)
    throw RpcError(
        500, fmt::format("checkpoint {} of job {} {}: {}", c.checkpoint_id, id,
                         c.status == CheckpointStatus::Timeout ? "timed out" : "failed", c.reason));
  return c;
}

Checkpoint Controller::run_checkpoint(int64_t job_id, CheckpointSource source,
                                      const std::string& description, const proto::Caller* who) {
  Checkpoint c;
  std::string node, parent_location;
  {
    Lock l(mu_);
    auto it = jobs_.find(job_id);
    if (it == jobs_.end()) throw RpcError(404, "Invalid job id specified");
    Job& j = it->second;
    if (who) check_owner(j, *who);
    if (cfg_.checkpoint_type == "checkpoint/none")
      throw RpcError(409, "checkpoints are disabled (CheckpointType = checkpoint/none)");
    // A job placed a moment ago may already be running and writing output while its
    // launch RPC has not returned: a user's checkpoint waits for that answer (bounded
    // by BatchStartTimeout) rather than failing on a race the user cannot see.
    if (who && j.state == JobState::Running && launching_.count(job_id))
      wake_.wait_for(l, std::chrono::seconds(cfg_.batch_start_timeout),
                     [&] { return stopping_ || !launching_.count(job_id); });
    if (j.state != JobState::Running || launching_.count(job_id) || !j.end_request.empty() ||
        j.awaiting_node)
      throw RpcError(
          409, fmt::format("Job {} is not running (state {}{})", job_id, j.state,
                           j.awaiting_node ? ", its start not yet confirmed by its node" : ""));
    if (ckpt_busy_.count(job_id))
      throw RpcError(409, fmt::format("job {}: a checkpoint is already in progress", job_id));
    c.checkpoint_id = ++j.last_checkpoint_id;
    c.job_id = job_id;
    c.source = source;
    c.description = description.empty() ? std::string(default_description(source)) : description;
    c.trigger_time = now_s();
    c.job_version = j.job_version;
    c.location =
        (cfg_.checkpoint_dir / std::to_string(job_id) / std::to_string(c.checkpoint_id)).string();
    c.generation = j.generation;
    if (cfg_.incremental) {
      if (const Checkpoint* p = incremental_parent(j)) {
        c.kind = CheckpointKind::Incremental;
        c.parent_id = p->checkpoint_id;
        parent_location = p->location;
      }
    }
    ckpt_busy_.insert(job_id);
    ckpt_rpc_.insert(job_id);
    ckpts_[job_id].push_back(c);
    save(j);
    save(c);
    node = j.nodes;
    spdlog::info("job {}: checkpoint {} ({}) triggered on {}", job_id, c.checkpoint_id, source,
                 node);
  }
  json reply;
  std::string error;
  std::optional<FailureClass> failure;
  bool timeout = false, answered = true;
  try {
    reply = node_rpc_->post(
        node, "/v1/node/checkpoint",
        proto::CheckpointRequest{
            .job_id = job_id,
            .dir = c.location,
            .leave_running = !proto::stops_job(source),
            .timeout = cfg_.checkpoint_timeout,
            .parent = parent_location,
            // Tracking from every dump the job survives, so the next one can be
            // incremental on it.
            .track_mem = cfg_.incremental && !proto::stops_job(source),
            // CRIU_PreDump for the checkpoints that are not incremental (an incremental
            // one freezes the job only to store what changed already).
            .pre_dump_delay = cfg_.pre_dump && parent_location.empty() ? cfg_.pre_dump_delay : -1,
            .track_method = cfg_.track_method},
        cfg_.checkpoint_timeout + 60);
  } catch (const RpcError& e) {
    error = e.what();
    failure = e.failure();
    timeout = e.status() == 504;
  } catch (const std::exception& e) {
    // No answer at all: fschedd died or the connection broke mid-way. The dump may
    // well have completed; the node reports its outcome once it is back.
    error = e.what();
    answered = false;
  }
  Lock l(mu_);
  ckpt_rpc_.erase(job_id);
  if (error.empty()) {
    settle_checkpoint(job_id, c.checkpoint_id, CheckpointStatus::Present, "",
                      reply.value("size", uint64_t{0}), reply.value("freeze_ms", 0.0),
                      reply.value("image_kind", std::string()),
                      reply.value("pre_dump_bytes", uint64_t{0}));
  } else if (answered) {
    settle_checkpoint(job_id, c.checkpoint_id,
                      timeout ? CheckpointStatus::Timeout : CheckpointStatus::Failed,
                      timeout ? error : classified(failure, error), 0, 0.0, "");
  } else {
    spdlog::warn(
        "job {}: checkpoint {}: no answer from {} ({}); it stays Creating until the node reports "
        "how "
        "the dump ended",
        job_id, c.checkpoint_id, node, error);
    auto current = [&]() -> const Checkpoint* {
      for (auto& x : ckpts_[job_id])
        if (x.checkpoint_id == c.checkpoint_id) return &x;
      return nullptr;
    };
    // The caller (scontrol) gets the real outcome if the node is back in time.
    wake_.wait_for(l, std::chrono::seconds(cfg_.checkpoint_timeout + 60), [&] {
      return stopping_ || !current() || current()->status != CheckpointStatus::Creating;
    });
  }
  for (auto& x : ckpts_[job_id])
    if (x.checkpoint_id == c.checkpoint_id) return x;
  return c;
}

Checkpoint* Controller::find_checkpoint(int64_t job_id, int64_t id) {
  for (auto& c : ckpts_[job_id])
    if (c.checkpoint_id == id) return &c;
  return nullptr;
}

std::vector<int64_t> Controller::chain_of(int64_t job_id, int64_t id) {
  std::vector<int64_t> out;
  // Parents are older than their children, so the walk ends; the bound guards a
  // corrupt database row all the same.
  while (id && out.size() <= ckpts_[job_id].size()) {
    out.push_back(id);
    const Checkpoint* c = find_checkpoint(job_id, id);
    if (!c || c->kind != CheckpointKind::Incremental || c->parent_id >= id) break;
    id = c->parent_id;
  }
  return out;
}

const Checkpoint* Controller::incremental_parent(const Job& j) {
  const Checkpoint* newest = nullptr;
  for (const auto& c : ckpts_[j.job_id])
    if (c.status == CheckpointStatus::Present && c.generation == j.generation && c.generation)
      newest = &c;
  if (!newest) return nullptr;  // the run's first: full (a restore starts tracking anew)
  // With CRIU_FullEvery = N, a full checkpoint and N - 1 incrementals on it, then full.
  if (chain_of(j.job_id, newest->checkpoint_id).size() >= static_cast<size_t>(cfg_.full_every))
    return nullptr;
  return newest;
}

bool Controller::settle_checkpoint(int64_t job_id, int64_t checkpoint_id, CheckpointStatus status,
                                   const std::string& reason, uint64_t size, double freeze_ms,
                                   const std::string& image_kind, uint64_t pre_dump_bytes) {
  auto& list = ckpts_[job_id];
  auto it = std::find_if(list.begin(), list.end(),
                         [&](const Checkpoint& x) { return x.checkpoint_id == checkpoint_id; });
  // Both the RPC's reply and the node's op_done carry the outcome: the first wins.
  if (it == list.end() || it->status != CheckpointStatus::Creating) return false;
  Checkpoint& c = *it;
  c.completion_time = now_s();
  c.duration = c.completion_time - c.trigger_time;
  c.status = status;
  c.reason = reason;
  if (status == CheckpointStatus::Present) {
    c.size = size;
    c.freeze_ms = freeze_ms;
    // The engine makes a full image when the job's tracking does not go back to the
    // parent (a failed dump since, a restore): then it needs no parent.
    if (image_kind == "full") {
      c.kind = CheckpointKind::Full;
      c.parent_id = 0;
    } else if (image_kind == "pre-dump") {
      c.kind = CheckpointKind::PreDump;
      c.parent_id = 0;
    }
    c.chain_size = c.size + (c.kind == CheckpointKind::PreDump ? pre_dump_bytes : 0);
    if (c.kind == CheckpointKind::Incremental)
      if (const Checkpoint* p = find_checkpoint(job_id, c.parent_id)) c.chain_size += p->chain_size;
  }
  save(c);
  ckpt_busy_.erase(job_id);
  auto jit = jobs_.find(job_id);
  if (jit == jobs_.end()) return true;
  Job& j = jit->second;
  if (c.status == CheckpointStatus::Present) {
    spdlog::info("job {}: checkpoint {} Present: {} bytes in {:.2f} s at {}", job_id,
                 c.checkpoint_id, c.size, c.duration, c.location);
    if (proto::stops_job(c.source) && j.state == JobState::Running) {
      // The dump stopped the job: its run is over and its node's share freed.
      release(j, now_s());
      j.end_time = 0;
      if (c.source == CheckpointSource::Vacate) {
        j.state = JobState::Pending;
        j.reason = "Vacated";
        spdlog::info("job {}: vacated: pending until restarted", job_id);
      } else {
        // Drain and preemption move the job: schedule() restores it on a node with room
        // (never a draining one; after the preemptor). Suspend keeps it for resume.
        // Retention keeps the checkpoint as the one to restore.
        j.state = c.source == CheckpointSource::Suspend ? JobState::Suspended : JobState::Pending;
        j.reason = "None";
        j.restore_from = c.checkpoint_id;
        restore_retries_.erase(job_id);
        std::string what;
        if (c.source == CheckpointSource::Suspend) {
          what = fmt::format("suspended on {} (checkpoint {}): CPUs and memory released", j.nodes,
                             c.checkpoint_id);
        } else {
          // If no image of it restores, a --requeue job starts over as after a node
          // failure rather than ending FAILED for a move it did not ask for.
          j.recovery_restore = j.requeue;
          what = c.source == CheckpointSource::Drain
                     ? fmt::format(
                           "vacated from {} by its drain (checkpoint {}): to be "
                           "restored on another node",
                           j.nodes, c.checkpoint_id)
                     : fmt::format("{} on {} (checkpoint {}): to be restored when room returns",
                                   c.description, j.nodes, c.checkpoint_id);
        }
        note(j, what);
        spdlog::info("job {}: {}", job_id, what);
      }
    }
    retain(j);
  } else {
    spdlog::warn("job {}: checkpoint {} {}: {}; the job keeps running", job_id, c.checkpoint_id,
                 c.status, c.reason);
    discard_image(c.location);
  }
  save(j);
  wake_.notify_all();
  return true;
}

void Controller::discard_image(const std::string& location) {
  if (location.empty()) return;
  spawn([location] {
    std::error_code ec;
    std::filesystem::remove_all(location, ec);
    if (ec) spdlog::warn("cannot remove the image {}: {}", location, ec.message());
    // And what may lie beside it: a half-written image, a pre-dump (CRIU_PreDump).
    for (const char* suffix : {".tmp", ".pre", ".pre.tmp"}) {
      std::filesystem::remove_all(location + suffix, ec);
      if (ec) spdlog::warn("cannot remove {}{}: {}", location, suffix, ec.message());
    }
  });
}

void Controller::retain(const Job& j) {
  auto& list = ckpts_[j.job_id];
  std::set<int64_t> needed;
  auto need = [&](int64_t id) {
    for (int64_t x : chain_of(j.job_id, id)) needed.insert(x);
  };
  int present = 0;
  const int keep = j.num_retained ? j.num_retained : cfg_.max_epochs;
  for (auto it = list.rbegin(); it != list.rend(); ++it) {
    if (it->status == CheckpointStatus::Present && ++present <= keep) need(it->checkpoint_id);
    if (it->status == CheckpointStatus::Creating && it->parent_id) need(it->parent_id);
  }
  if (j.restore_from) need(j.restore_from);  // being restored from
  for (auto& c : list) {
    if (c.status != CheckpointStatus::Present || needed.contains(c.checkpoint_id)) continue;
    // Recorded first, removed by a worker outside mu_: an image may be many GB on slow
    // storage, and every request waits on mu_. A removal that fails is logged and tried
    // again at the next start (the sweep in start()).
    c.status = CheckpointStatus::Cleared;
    c.reason = j.num_retained ? fmt::format("retention: the job keeps {}", keep)
                              : fmt::format("retention: CRIU_MaxEpochs = {}", keep);
    save(c);
    discard_image(c.location);
    spdlog::info("job {}: checkpoint {} Cleared ({})", j.job_id, c.checkpoint_id, c.reason);
  }
}

bool Controller::clear_if_missing(Checkpoint& c) {
  std::error_code ec;
  bool there = std::filesystem::exists(c.location, ec);
  // Only a definite "no such directory" clears it: storage that cannot be read just
  // now (EIO, a stale NFS handle) says nothing about the image, and the restore will.
  if (there || (ec && ec != std::errc::no_such_file_or_directory)) return false;
  c.status = CheckpointStatus::Cleared;
  c.reason = fmt::format("its image directory {} is missing (removed outside fsched)", c.location);
  save(c);
  spdlog::warn("job {}: checkpoint {} Cleared: {}", c.job_id, c.checkpoint_id, c.reason);
  return true;
}

nlohmann::json Controller::restart_job(const proto::Request& r) {
  Lock l(mu_);
  Job& j = job_of(r.params.at(0));
  check_owner(j, r.caller);
  if (j.state == JobState::Suspended)
    throw RpcError(409, fmt::format("Job {} is suspended: scontrol resume restores it", j.job_id));
  bool restartable = (j.state == JobState::Pending && j.reason == "Vacated") ||
                     j.state == JobState::Failed || j.state == JobState::Cancelled ||
                     j.state == JobState::Timeout || j.state == JobState::NodeFail;
  if (!restartable)
    throw RpcError(409, fmt::format("Job {} cannot be restarted: it is {}{}", j.job_id, j.state,
                                    j.state == JobState::Pending ? " (not vacated)" : ""));
  int64_t want = proto::int_field(r.body, "checkpoint_id", 0, 0, kMaxId);
  int64_t chosen = 0;
  for (auto& c : ckpts_[j.job_id])
    if (c.status == CheckpointStatus::Present) clear_if_missing(c);
  for (auto& c : ckpts_[j.job_id]) {
    if (want && c.checkpoint_id == want) {
      if (c.status != CheckpointStatus::Present)
        throw RpcError(409, fmt::format("checkpoint {} of job {} is {}, not Present", want,
                                        j.job_id, c.status));
      chosen = want;
    }
    if (!want && c.status == CheckpointStatus::Present) chosen = c.checkpoint_id;
  }
  if (want && !chosen)
    throw RpcError(404, fmt::format("job {} has no checkpoint {}", j.job_id, want));
  if (!chosen)
    throw RpcError(409, fmt::format("job {} has no Present checkpoint to restart from", j.job_id));
  j.state = JobState::Pending;
  j.reason = "None";
  j.hold = false;
  j.restore_from = chosen;
  j.end_time = 0;
  j.end_request.clear();
  restore_retries_.erase(j.job_id);  // an explicit restart starts counting anew
  save(j);
  spdlog::info("job {}: restart from checkpoint {} requested by uid {}", j.job_id, chosen,
               r.caller.uid);
  wake_.notify_all();
  return api(j);
}

nlohmann::json Controller::suspend_job(const proto::Request& r) {
  int64_t id;
  {
    Lock l(mu_);
    Job& j = job_of(r.params.at(0));
    check_owner(j, r.caller);
    if (j.state == JobState::Suspended)
      throw RpcError(409, fmt::format("Job {} is already suspended", j.job_id));
    id = j.job_id;
  }
  if (field<bool>(r.body, "in_place", false)) return suspend_in_place(id, true, r.caller);
  Checkpoint c = run_checkpoint(id, CheckpointSource::Suspend,
                                field<std::string>(r.body, "description", ""), &r.caller);
  if (c.status != CheckpointStatus::Present)
    throw RpcError(
        500, fmt::format("Job {} not suspended: checkpoint {} {}: {}; it keeps running", id,
                         c.checkpoint_id,
                         c.status == CheckpointStatus::Timeout ? "timed out" : "failed", c.reason));
  return c;
}

nlohmann::json Controller::resume_job(const proto::Request& r) {
  Lock l(mu_);
  Job& j = job_of(r.params.at(0));
  check_owner(j, r.caller);
  if (j.state != JobState::Suspended)
    throw RpcError(409, fmt::format("Job {} is not suspended (state {})", j.job_id, j.state));
  if (j.suspended_by)
    throw RpcError(409, fmt::format("Job {} was suspended by the preemption of job {}: it resumes "
                                    "by itself once its CPUs are free",
                                    j.job_id, j.suspended_by));
  if (j.suspended_in_place) {
    int64_t id = j.job_id;
    l.unlock();
    return suspend_in_place(id, false, r.caller);
  }
  // Its suspend checkpoint; the newest Present one if that one is gone.
  int64_t chosen = 0;
  for (auto& c : ckpts_[j.job_id]) {
    if (c.status != CheckpointStatus::Present || clear_if_missing(c)) continue;
    if (chosen != j.restore_from) chosen = c.checkpoint_id;
  }
  if (!chosen)
    throw RpcError(409, fmt::format("job {} has no Present checkpoint to resume from (its suspend "
                                    "checkpoint {} is gone): scontrol requeue starts it over",
                                    j.job_id, j.restore_from));
  if (chosen != j.restore_from)
    note(j, fmt::format("suspend checkpoint {} is gone: resuming from checkpoint {}",
                        j.restore_from, chosen));
  j.state = JobState::Pending;
  j.reason = "None";
  j.restore_from = chosen;
  j.recovery_restore = false;
  restore_retries_.erase(j.job_id);
  note(j, fmt::format("resumed by {}: to be restored from checkpoint {}", user_name(r.caller.uid),
                      chosen));
  save(j);
  spdlog::info("job {}: resume from checkpoint {} requested by uid {}", j.job_id, chosen,
               r.caller.uid);
  wake_.notify_all();
  return api(j);
}

nlohmann::json Controller::list_checkpoints(const proto::Request& r) {
  Lock l(mu_);
  Job& j = job_of(r.params.at(0));
  return {{"checkpoints", ckpts_[j.job_id]}};
}

nlohmann::json Controller::delete_checkpoint(const proto::Request& r) {
  Lock l(mu_);
  Job& j = job_of(r.params.at(0));
  check_owner(j, r.caller);
  int64_t cid = 0;
  if (auto [p, ec] = std::from_chars(r.params.at(1).data(),
                                     r.params.at(1).data() + r.params.at(1).size(), cid);
      ec != std::errc{} || p != r.params.at(1).data() + r.params.at(1).size())
    throw RpcError(400, fmt::format("invalid checkpoint id '{}'", r.params.at(1)));
  for (auto& c : ckpts_[j.job_id]) {
    if (c.checkpoint_id != cid) continue;
    if (c.status == CheckpointStatus::Creating)
      throw RpcError(409,
                     fmt::format("checkpoint {} of job {} is still being written", cid, j.job_id));
    if (j.restore_from == cid && j.state != JobState::Completed)
      throw RpcError(409,
                     fmt::format("checkpoint {} of job {} is being restored from", cid, j.job_id));
    // An incremental checkpoint needs its parent: deleting the parent would make every
    // checkpoint above it unrestorable, so it is refused (docs/incremental.md).
    std::vector<int64_t> above;
    for (auto& x : ckpts_[j.job_id])
      if (x.checkpoint_id != cid &&
          (x.status == CheckpointStatus::Present || x.status == CheckpointStatus::Creating)) {
        auto chain = chain_of(j.job_id, x.checkpoint_id);
        if (std::find(chain.begin(), chain.end(), cid) != chain.end())
          above.push_back(x.checkpoint_id);
      }
    if (!above.empty())
      throw RpcError(409, fmt::format("checkpoint {} of job {} is the parent image of incremental "
                                      "checkpoint(s) {}, which need it: delete those first",
                                      cid, j.job_id, fmt::join(above, ", ")));
    // Removed by a worker outside mu_, as retention does (see retain()).
    c.status = CheckpointStatus::Cleared;
    c.reason = fmt::format("deleted by uid {}", r.caller.uid);
    save(c);
    discard_image(c.location);
    spdlog::info("job {}: checkpoint {} Cleared ({})", j.job_id, cid, c.reason);
    return c;
  }
  throw RpcError(404, fmt::format("job {} has no checkpoint {}", j.job_id, cid));
}

}  // namespace fsched::ctld
