// fschedd's POST /v1/node/suspend: Slurm's in-place suspend (scontrol suspend
// --in-place). The run's own cgroup is frozen (cgroup.freeze, Documentation/admin-guide/
// cgroup-v2.rst "Core Interface Files"): its processes stay in memory, stopped without a
// signal they could see, and a thaw lets them go on. The lease freezes the parent
// "jobs" cgroup instead, so a lease renewal's thaw leaves a suspended run frozen.
#include <chrono>
#include <filesystem>
#include <thread>

#include <spdlog/spdlog.h>

#include "noded/cgroup.h"
#include "noded/node.h"
#include "proto/node_requests.h"

namespace fsched::noded {

using proto::RpcError;

nlohmann::json NodeDaemon::suspend(const proto::Request& r) {
  const auto q = r.body.get<proto::SuspendRequest>();
  {
    std::lock_guard l(mu_);
    auto it = jobs_.find(q.job_id);
    if (it == jobs_.end() || it->second.ended || it->second.generation != q.generation)
      throw RpcError(409, fmt::format("job {} has no run {} on {}", q.job_id, q.generation, name_));
    // An operation done whose report is not yet sent: the controller holds its outcome
    // (it sends nothing new for a job before), so it no longer counts.
    supersede_done_op(q.job_id);
    // A dump freezes and thaws the same cgroup: the two must not cross.
    if (ops_.count(q.job_id))
      throw RpcError(409,
                     fmt::format("job {}: an operation on it is under way on {}", q.job_id, name_));
  }
  const std::filesystem::path path = jobs_cg_.path() / run_cgroup_name(q.job_id, q.generation);
  std::error_code ec;
  if (!std::filesystem::is_directory(path, ec))  // Cgroup() would make it
    throw RpcError(409, fmt::format("job {}: run {} has no cgroup {} on {}", q.job_id, q.generation,
                                    path.string(), name_));
  Cgroup cg(path);
  try {
    cg.freeze(q.stop);
    // Frozen once every process has stopped (cgroup.events "frozen 1"); a thaw is
    // immediate unless the lease holds the parent frozen, which is not this run's state.
    auto end = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (q.stop && !cg.frozen() && std::chrono::steady_clock::now() < end)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    if (q.stop && !cg.frozen())
      throw RpcError(500, fmt::format("job {}: its cgroup {} did not freeze within 10 s", q.job_id,
                                      cg.path().string()));
  } catch (...) {
    cg.release();  // the run's cgroup is not ours to remove
    throw;
  }
  cg.release();
  spdlog::info("job {}: run {} {}", q.job_id, q.generation,
               q.stop ? "suspended in place (cgroup frozen)" : "resumed (cgroup thawed)");
  return nlohmann::json::object();
}

}  // namespace fsched::noded
