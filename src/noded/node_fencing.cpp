// NodeDaemon's fencing (node.h, docs/fencing-node.md): stale runs, run cgroups, the lease.
#include "noded/node.h"

#include <signal.h>

#include <algorithm>
#include <chrono>

#include <fmt/chrono.h>
#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/failure.h"
#include "noded/node_internal.h"

namespace fsched::noded {

using namespace node_detail;
using proto::RpcError;
namespace fs = std::filesystem;

void NodeDaemon::check_fencing(const LaunchRequest& q) const {
  std::lock_guard l(mu_);
  check_fencing_locked(q);
}

void NodeDaemon::check_fencing_locked(const LaunchRequest& q) const {
  int64_t id = q.job_id;
  if (lease_->expired())
    throw RpcError(503,
                   fmt::format("node {}'s lease has expired (no successful heartbeat in time): "
                               "no new runs until the controller answers",
                               name_),
                   FailureClass::kTransient);
  if (q.issued != 0) {
    double age = unix_now() - q.issued;
    if (age > cfg_.cred_expire)
      throw RpcError(409, fmt::format("job {}: request issued {:.0f} s ago, more than AuthInfo "
                                      "cred_expire ({} s): refused as stale",
                                      id, age, cfg_.cred_expire));
  }
  // A vacated run (dumped and killed, the controller maybe not yet told) is not one the
  // node has: its restore may come with the same generation from an older controller.
  if (auto it = jobs_.find(id);
      it != jobs_.end() && !it->second.vacating && q.generation <= it->second.generation)
    throw RpcError(409, fmt::format("job {}: generation {} is not newer than generation {} that "
                                    "node {} runs: refused as stale",
                                    id, q.generation, it->second.generation, name_));
  if (auto it = stale_gen_.find(id); it != stale_gen_.end() && q.generation <= it->second)
    throw RpcError(409, fmt::format("job {}: generation {} is not newer than generation {}, which "
                                    "the controller declared stale: refused",
                                    id, q.generation, it->second));
}

void NodeDaemon::remember_stale(int64_t id, int64_t generation) {
  constexpr size_t kMaxStale = 4096;
  auto [it, added] = stale_gen_.try_emplace(id, generation);
  if (!added) {
    it->second = std::max(it->second, generation);
    return;
  }
  stale_order_.push_back(id);
  while (stale_order_.size() > kMaxStale) {
    stale_gen_.erase(stale_order_.front());
    stale_order_.pop_front();
  }
}

void NodeDaemon::end_run_cgroup(int64_t id) {
  auto it = run_cg_.find(id);
  if (it == run_cg_.end()) return;
  try {
    it->second.cg.kill();
  } catch (const std::exception& e) {
    spdlog::warn("job {}: {}", id, e.what());
  }
  ending_.push_back(std::move(it->second.cg));
  run_cg_.erase(it);
}

void NodeDaemon::remove_ended_cgroups() {
  // Under mu_, and without killing again: a launch may take over a directory of the
  // same name (launch()), and must find it neither removed nor killed under it.
  std::lock_guard l(mu_);
  std::vector<Cgroup> busy;
  for (auto& cg : ending_)
    if (!cg.try_remove()) busy.push_back(std::move(cg));
  ending_ = std::move(busy);
}

int NodeDaemon::on_heartbeat_reply(const proto::HeartbeatReply& reply,
                                   Lease::Clock::time_point sent) {
  int killed = 0;
  {
    std::lock_guard l(mu_);
    // First the stale runs, while still frozen: thawed, they would run on for a moment
    // beside their newer copy.
    for (const auto& st : reply.stale) {
      remember_stale(st.job_id, st.generation);
      bool hit = false;
      if (auto rc = run_cg_.find(st.job_id);
          rc != run_cg_.end() && rc->second.generation == st.generation) {
        end_run_cgroup(st.job_id);
        hit = true;
      }
      auto it = jobs_.find(st.job_id);
      if (it != jobs_.end() && it->second.generation == st.generation) {
        LocalJob j = it->second;
        if (alive(j)) ::kill(j.pid, SIGKILL);  // in case it had no cgroup (older fschedd)
        jobs_.erase(it);
        hit = true;
        // Its files, unless they are already those of a newer run (the nodes of a test
        // cluster share the spool directory).
        std::error_code ec;
        try {
          LocalJob on_disk = json::parse(read_file(job_dir(j.job_id) / "job.json")).get<LocalJob>();
          if (on_disk.node == name_ && on_disk.generation == j.generation)
            fs::remove_all(job_dir(j.job_id), ec);
        } catch (const std::exception&) {
        }
      }
      if (hit) {
        ++killed;
        spdlog::warn("job {}: generation {} is stale (the controller moved or ended it): killed",
                     st.job_id, st.generation);
      }
    }
  }
  int seconds = reply.lease > 0 ? reply.lease : cfg_.slurmd_timeout;
  lease_->renew(sent, std::chrono::seconds(seconds));
  if (lease_->expired()) {
    // A reply that took longer than the lease (a stopped controller answering at
    // last): the jobs stay frozen until a heartbeat is answered in time.
    spdlog::warn("heartbeat answered after its lease ({} s) had run out: jobs stay frozen",
                 seconds);
  } else if (lease_->thaw()) {
    spdlog::info("lease renewed: {} stale runs killed, jobs thawed", killed);
  } else if (killed) {
    spdlog::info("{} stale runs killed", killed);
  }
  frozen_logged_ = false;
  return killed;
}

std::vector<proto::RunRef> NodeDaemon::runs() const {
  std::lock_guard l(mu_);
  std::vector<proto::RunRef> out;
  for (auto& [id, j] : jobs_) out.push_back({id, j.generation});
  return out;
}

void NodeDaemon::log_lease() {
  int err = lease_->guard_errno();
  if (err != guard_err_logged_ && err != 0)
    spdlog::error("the lease guard cannot freeze the jobs: {}: {}",
                  (jobs_cg_.path() / "cgroup.freeze").string(), Error::errno_text(err));
  guard_err_logged_ = err;
  if (!lease_->frozen()) return;
  if (frozen_logged_) return;
  frozen_logged_ = true;
  // The guard's monotonic instant, as wall-clock time for the log.
  auto ago = Lease::Clock::now() - lease_->frozen_at();
  auto wall = std::chrono::system_clock::now() -
              std::chrono::duration_cast<std::chrono::system_clock::duration>(ago);
  auto expiry = lease_->expiry();
  if (expiry.time_since_epoch().count() == 0)
    spdlog::warn(
        "no lease yet (fschedd started): jobs frozen at {:%FT%T} until the controller "
        "answers",
        fmt::localtime(std::chrono::system_clock::to_time_t(wall)));
  else
    spdlog::warn("lease expired at {:%FT%T}: jobs frozen",
                 fmt::localtime(std::chrono::system_clock::to_time_t(
                     std::chrono::system_clock::now() -
                     std::chrono::duration_cast<std::chrono::system_clock::duration>(
                         Lease::Clock::now() - expiry))));
}
}  // namespace fsched::noded
