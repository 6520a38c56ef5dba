// The controller's preemption (PreemptType = preempt/partition_prio): a job pending for
// resources in a partition of a higher PriorityTier stops running jobs of lower tiers,
// by checkpoint (PreemptMode = CHECKPOINT), requeue or cancel (docs/scheduler.md,
// "Preemption").
#include <signal.h>

#include <algorithm>
#include <functional>

#include <spdlog/spdlog.h>

#include "ctld/controller.h"
#include "ctld/controller_impl.h"

namespace fsched::ctld {

using proto::PreemptMode;

int Controller::tier_of(const Job& j) const {
  const proto::PartitionConf* p = cfg_.partition(j.partition);
  return p ? p->priority_tier : 0;
}

void Controller::preempt(double now) {
  // Victims that have stopped (or ended otherwise) are done with; so are reservations
  // of preemptors placed, gone, or whose victims have all stopped.
  std::erase_if(preempting_, [&](const auto& e) {
    auto it = jobs_.find(e.first);
    return it == jobs_.end() || it->second.state != JobState::Running;
  });
  std::erase_if(reserved_, [&](const auto& e) {
    auto it = jobs_.find(e.first);
    if (it == jobs_.end() || it->second.state != JobState::Pending) return true;
    return std::none_of(preempting_.begin(), preempting_.end(),
                        [&](const auto& v) { return v.second == e.first; });
  });
  if (!cfg_.preempt_partition_prio || cfg_.preempt_mode == PreemptMode::Off) return;

  // Jobs pending for resources (schedule() found no room), highest tier first, then
  // in submission order.
  std::vector<Job*> waiting;
  for (auto& [id, j] : jobs_)
    if (j.state == JobState::Pending && !j.hold && j.reason == "Resources" &&
        !launching_.count(id) && !reserved_.count(id))
      waiting.push_back(&j);
  std::stable_sort(waiting.begin(), waiting.end(),
                   [&](const Job* a, const Job* b) { return tier_of(*a) > tier_of(*b); });
  const bool by_checkpoint =
      cfg_.preempt_mode == PreemptMode::Checkpoint && cfg_.checkpoint_type != "checkpoint/none";
  // Seconds of work a victim loses: none by a checkpoint (its dump costs time only) or a
  // suspend, else all of it, as a requeue or cancel starts it over.
  const bool by_suspend = cfg_.preempt_mode == PreemptMode::Suspend;
  auto lost = [&](const Job& v) {
    return by_checkpoint || by_suspend
               ? 0.0
               : static_cast<double>(v.run_time_done) + (now - v.start_time);
  };
  for (Job* pj : waiting) {
    const int tier = tier_of(*pj);
    const proto::PartitionConf* part = cfg_.partition(pj->partition);
    if (!part) continue;
    struct Choice {
      Node* node = nullptr;
      std::vector<Job*> victims;
      double lost = 0;
    } best;
    for (const auto& name : part->nodes) {
      Node& n = nodes_.at(name);
      if (!node_up(n) || n.drain || n.unconfirmed_at > n.report_time || n.cpus < pj->num_cpus() ||
          n.real_memory < pj->mem_mb)
        continue;
      // A node another (higher or older) preemptor waits on is left to it.
      if (std::any_of(reserved_.begin(), reserved_.end(),
                      [&](const auto& r) { return r.second == name; }))
        continue;
      std::vector<Job*> cands;
      for (auto& [id, v] : jobs_)
        if (v.state == JobState::Running && v.nodes == name && tier_of(v) < tier &&
            !preempting_.count(id) && !launching_.count(id) && !v.awaiting_node &&
            v.end_request.empty() && !ckpt_busy_.count(id) &&
            now - v.start_time >= static_cast<double>(cfg_.preempt_exempt_time))
          cands.push_back(&v);
      // Least lost work first; among equals the smaller memory (a shorter dump), then the
      // youngest run.
      std::sort(cands.begin(), cands.end(), [&](const Job* a, const Job* b) {
        if (lost(*a) != lost(*b)) return lost(*a) < lost(*b);
        if (a->mem_mb != b->mem_mb) return a->mem_mb < b->mem_mb;
        return a->start_time > b->start_time;
      });
      int free_cpus = n.cpus - n.alloc_cpus;
      uint64_t free_mem = n.real_memory - std::min(n.real_memory, n.alloc_memory);
      Choice c{&n, {}, 0};
      for (Job* v : cands) {
        if (free_cpus >= pj->num_cpus() && free_mem >= pj->mem_mb) break;
        c.victims.push_back(v);
        c.lost += lost(*v);
        free_cpus += v->num_cpus();
        if (!by_suspend) free_mem += v->mem_mb;  // a suspended job keeps its memory
      }
      if (free_cpus < pj->num_cpus() || free_mem < pj->mem_mb || c.victims.empty()) continue;
      if (!best.node || c.lost < best.lost ||
          (c.lost == best.lost && c.victims.size() < best.victims.size()))
        best = std::move(c);
    }
    if (!best.node) continue;
    reserved_[pj->job_id] = best.node->name;
    std::vector<int64_t> ids;
    for (Job* v : best.victims) {
      ids.push_back(v->job_id);
      preempting_[v->job_id] = pj->job_id;
      int64_t vid = v->job_id, by = pj->job_id;
      spawn([this, vid, by] { preempt_job(vid, by); });
    }
    spdlog::info("job {} (PriorityTier {}): preempting job(s) {} on {} ({})", pj->job_id, tier,
                 fmt::join(ids, ", "), best.node->name, cfg_.preempt_mode);
    note(*pj, fmt::format("preempting job(s) {} on {} ({})", fmt::join(ids, ", "), best.node->name,
                          cfg_.preempt_mode));
    save(*pj);
  }
}

void Controller::resume_preempted() {
  for (auto& [id, j] : jobs_) {
    if (j.state != JobState::Suspended || !j.suspended_by || resuming_.count(id) ||
        ckpt_busy_.count(id))
      continue;
    auto nit = nodes_.find(j.nodes);
    if (nit == nodes_.end() || !node_up(nit->second)) continue;
    Node& n = nit->second;
    if (n.cpus - n.alloc_cpus < j.num_cpus() ||
        std::any_of(reserved_.begin(), reserved_.end(),
                    [&](const auto& r) { return r.second == n.name; }))
      continue;
    // A job of a higher tier waiting for a node like this one would preempt it again.
    const int tier = tier_of(j);
    bool wanted = std::any_of(jobs_.begin(), jobs_.end(), [&](const auto& e) {
      const Job& p = e.second;
      if (p.state != JobState::Pending || p.hold || tier_of(p) <= tier) return false;
      const proto::PartitionConf* part = cfg_.partition(p.partition);
      return part && std::find(part->nodes.begin(), part->nodes.end(), n.name) != part->nodes.end();
    });
    if (wanted) continue;
    n.alloc_cpus += j.num_cpus();
    resuming_.insert(id);
    int64_t jid = id;
    spawn([this, jid] {
      try {
        suspend_in_place(jid, false, proto::Caller{});
      } catch (const std::exception& e) {
        spdlog::warn("job {}: resume after its preemption failed: {}; tried again", jid, e.what());
      }
    });
  }
}

void Controller::preempt_job(int64_t id, int64_t by) {
  std::string why;  // why the checkpoint or suspend did not do, "" if it did or was not tried
  // Runs the mode's way of stopping the job without losing it: true once done, or when
  // the job was not in a state for it (409: no longer running, or a dump under way), in
  // which case the next round decides again; false with `why` when it failed.
  auto stopped = [&](const std::function<bool()>& how) {
    try {
      return how();
    } catch (const proto::RpcError& e) {
      if (e.status() == 409) {
        Lock l(mu_);
        preempting_.erase(id);
        return true;
      }
      why = e.what();
    } catch (const std::exception& e) {
      why = e.what();
    }
    return false;
  };
  if (cfg_.preempt_mode == PreemptMode::Suspend && stopped([&] {
        suspend_in_place(id, true, proto::Caller{}, by);
        return true;
      }))
    return;
  if (cfg_.preempt_mode == PreemptMode::Checkpoint) {
    if (cfg_.checkpoint_type == "checkpoint/none") {
      why = "checkpoints are disabled (CheckpointType = checkpoint/none)";
    } else if (stopped([&] {
                 Checkpoint c = run_checkpoint(id, CheckpointSource::Preempt,
                                               fmt::format("preempted by job {}", by), nullptr);
                 if (c.status == CheckpointStatus::Present) return true;  // settle requeued it
                 why = fmt::format("checkpoint {} {}: {}", c.checkpoint_id, c.status, c.reason);
                 return false;
               })) {
      return;
    }
  }
  Lock l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end() || it->second.state != JobState::Running || !it->second.end_request.empty())
    return;
  Job& j = it->second;
  // REQUEUE, or what Slurm does next when a checkpoint cannot be had: requeue, or cancel
  // a job that may not be requeued.
  bool requeue = cfg_.preempt_mode != PreemptMode::Cancel && j.requeue;
  std::string what = fmt::format("preempted by job {} ({}): {}", by, cfg_.preempt_mode,
                                 requeue ? "requeued from scratch" : "cancelled");
  if (!why.empty())
    what += fmt::format(", as its {} failed ({})",
                        cfg_.preempt_mode == PreemptMode::Suspend ? "suspend" : "checkpoint", why);
  spdlog::info("job {}: {}", id, what);
  note(j, what);
  j.end_request = requeue ? "requeue" : "cancel";
  save(j);
  terminate(j, SIGTERM, true);
}

}  // namespace fsched::ctld
