// NodeDaemon's operations (node.h): the op runner started, its outcome decided and reported.
#include "noded/node.h"

#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <thread>

#include <spdlog/spdlog.h>

#include "common/failure.h"
#include "noded/node_internal.h"
#include "noded/spawn.h"

namespace fsched::noded {

using namespace node_detail;

namespace {

using proto::RpcError;
namespace fs = std::filesystem;

uint64_t tree_bytes(const fs::path& dir) {
  uint64_t n = 0;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec))
    if (it->is_regular_file(ec)) n += it->file_size(ec);
  return n;
}

}  // namespace

OpRecord NodeDaemon::run_op(OpRecord rec, const std::vector<std::string>& argv,
                            const std::map<std::string, std::string>& env, const fs::path& cgroup) {
  int64_t id = rec.job_id;
  auto give_up = [&](const std::string& why) {
    std::lock_guard l(mu_);
    ops_.erase(id);
    if (rec.kind == OpKind::Vacate)
      if (auto it = jobs_.find(id); it != jobs_.end()) it->second.vacating = false;
    throw RpcError(500,
                   fmt::format("job {}: cannot start the {}: {}", id, to_string(rec.kind), why));
  };
  UniqueFd lock;
  pid_t runner = 0;
  try {
    lock = oplog_.try_lock(id);
    if (!lock) {
      std::lock_guard l(mu_);
      ops_.erase(id);
      throw RpcError(409, fmt::format("job {}: an earlier operation's runner still holds {}", id,
                                      oplog_.lock_path(id).string()));
    }
    // Recorded before it starts: a restarted fschedd must know it may be under way.
    oplog_.put(rec);
  } catch (const RpcError&) {
    throw;
  } catch (const std::exception& e) {
    give_up(e.what());
  }
  {
    std::lock_guard l(mu_);
    ops_[id] = rec;
  }
  spdlog::info("job {}: {} started ({})", id, to_string(rec.kind),
               rec.image_dir.empty() ? "-" : rec.image_dir);
  try {
    runner = oplog_.start_runner(id, lock, argv, env, rec.timeout_s, cgroup);
  } catch (const std::exception& e) {
    oplog_.remove(id);
    give_up(e.what());
  }
  lock.reset();  // the runner holds the flock now
  int st = 0;
  while (::waitpid(runner, &st, 0) < 0 && errno == EINTR) {
  }
  std::optional<RunnerResult> res = oplog_.result(id);
  if (!res)
    // Killed from outside (it is fschedd's own child): the image decides below, and
    // the log says what became of the runner.
    spdlog::warn("job {}: the {}'s runner (pid {}) left no result: {}", id, to_string(rec.kind),
                 runner,
                 WIFSIGNALED(st) ? fmt::format("killed by signal {}", WTERMSIG(st))
                                 : fmt::format("exit status {}", WEXITSTATUS(st)));
  finish_op(rec, res);
  return rec;
}

// A dump killed inside a TCP repair window leaves the run's cgroup frozen until the
// network lock's guardian has taken the job's sockets out of repair mode and thawed it
// (src/ckpt/cgroup_freeze.h), within milliseconds. Had the guardian died too, the job
// would stay frozen for good: it is thawed here once the guardian had its moment.
// Nothing else sets a run's own cgroup.freeze (the lease freezes "jobs", above it).
void NodeDaemon::thaw_after_failed_dump(int64_t id) {
  int64_t generation = 0;
  {
    std::lock_guard l(mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second.ended) return;
    generation = it->second.generation;
  }
  const fs::path path = jobs_cg_.path() / run_cgroup_name(id, generation);
  std::error_code ec;
  if (!fs::is_directory(path, ec)) return;
  try {
    Cgroup cg(path);
    for (int i = 0; i < 20 && cg.freeze_set(); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    if (cg.freeze_set()) {
      cg.freeze(false);
      spdlog::warn(
          "job {}: its failed dump left its cgroup frozen (the network lock's guardian is gone "
          "too): thawed",
          id);
    }
    cg.release();
  } catch (const std::exception& e) {
    spdlog::warn("job {}: cannot check whether its failed dump left it frozen: {}", id, e.what());
  }
}

bool NodeDaemon::verify_image(const std::string& dir, std::string& why) const {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) {
    why = fmt::format(
        "no complete image at {} (the engine renames {}.tmp only when it is complete)", dir, dir);
    return false;
  }
  try {
    SpawnResult res =
        spawn_wait({ckpt_tool(), "verify", "--dir", dir}, {{"PATH", "/usr/bin:/bin"}}, 600);
    if (res.exit_code() == 0) return true;
    why = "image verification failed: " + res.error_line();
  } catch (const std::exception& e) {
    why = fmt::format("cannot verify {}: {}", dir, e.what());
  }
  return false;
}

void NodeDaemon::finish_op(OpRecord& rec, const std::optional<RunnerResult>& res) {
  int64_t id = rec.job_id;
  std::error_code ec;
  bool engine_ok = res && res->exit_code == 0 && !res->timed_out;
  if (rec.is_dump()) {
    fs::path tmp = rec.image_dir + ".tmp";
    std::string why;
    if (engine_ok) {
      rec.outcome = OpOutcome::Ok;
      json st = json::parse(res->out, nullptr, false);
      if (st.is_object()) {
        rec.size = st.value("image_bytes", uint64_t{0});
        rec.freeze_ms = st.value("freeze_ms", 0.0);
        rec.dump_ms = st.value("dump_ms", 0.0);
        const bool incremental = st.value("incremental", false);
        rec.image_kind = !incremental ? "full" : rec.pre_dump_bytes ? "pre-dump" : "incremental";
        if (!incremental && rec.pre_dump_bytes) {
          // Full after all (the job's tracking did not go back to the pre-dump): the
          // pre-dump image is of no use.
          fs::remove_all(rec.image_dir + ".pre", ec);
          rec.pre_dump_bytes = 0;
        }
      }
    } else if (res && res->timed_out) {
      // Killed by CheckpointTimeout: whatever it left is not an image to keep.
      rec.outcome = OpOutcome::Timeout;
      rec.error = fmt::format("the dump took longer than CheckpointTimeout ({} s) and was stopped",
                              rec.timeout_s);
      fs::remove_all(rec.image_dir, ec);
    } else if (verify_image(rec.image_dir, why)) {
      // The engine's report is missing (or it died after the rename): the image
      // itself, not how the RPC ended, says whether the checkpoint exists.
      rec.outcome = OpOutcome::Ok;
      rec.size = tree_bytes(rec.image_dir);
      spdlog::info("job {}: {} to {} has no engine report, but the image is complete and verified",
                   id, to_string(rec.kind), rec.image_dir);
    } else {
      rec.outcome = OpOutcome::Failed;
      rec.error = res ? res->error_line : "the dump's runner ended without a result; " + why;
      // A partial or unverifiable image is no checkpoint: remove it here, on the node
      // that wrote it.
      if (fs::exists(rec.image_dir, ec)) fs::remove_all(rec.image_dir, ec);
    }
    fs::remove_all(tmp, ec);
    if (!engine_ok) thaw_after_failed_dump(id);
    std::lock_guard l(mu_);
    auto it = jobs_.find(id);
    if (rec.kind == OpKind::Vacate && it != jobs_.end()) {
      if (rec.outcome == OpOutcome::Ok) {
        // The job continues from the image only: the dumped run must be surely gone,
        // also if the engine died between the rename and its kill.
        if (alive(it->second)) {
          spdlog::warn("job {}: still running after its vacate dump: SIGKILL", id);
          ::kill(it->second.pid, SIGKILL);
        }
        it->second.vacating = true;  // until the controller has the outcome
        end_run_cgroup(id);          // and whatever the job left behind
        // Its files go now, as the vacate's last step: once the controller has the
        // outcome it may restore the job on another node into the same spool path.
        fs::remove_all(job_dir(id), ec);
      } else {
        it->second.vacating = false;
      }
    }
  } else {
    fs::path pidfile = job_dir(id) / "init.pid";
    std::string pid_text = read_file(pidfile);
    pid_t pid = pid_text.empty() ? 0 : static_cast<pid_t>(std::atol(pid_text.c_str()));
    if (engine_ok && pid > 0) {
      rec.outcome = OpOutcome::Ok;
    } else if (!res && pid > 0) {
      // No result, but the engine wrote the pid file, which it does only once the job
      // (or the restored tree) exists: it runs, and is ours to track.
      rec.outcome = OpOutcome::Ok;
      spdlog::info("job {}: {} has no engine report, but init {} was started: tracking it", id,
                   to_string(rec.kind), pid);
    } else {
      rec.outcome = OpOutcome::Failed;
      rec.error = res ? (engine_ok ? "the engine wrote no pid file" : res->error_line)
                      : "the runner ended without a result and no job was started";
    }
    bool stale = false;
    {
      std::lock_guard l(mu_);
      auto sg = stale_gen_.find(id);
      stale = sg != stale_gen_.end() && rec.generation <= sg->second;
    }
    if (rec.outcome == OpOutcome::Ok && stale) {
      // Told stale while it started: it must not run (its cgroup was killed).
      rec.outcome = OpOutcome::Failed;
      rec.failure = to_string(FailureClass::kTransient);
      rec.error = fmt::format("generation {} of job {} was declared stale while it started",
                              rec.generation, id);
    }
    if (rec.outcome != OpOutcome::Ok) {
      std::lock_guard l(mu_);
      end_run_cgroup(id);
    }
    if (rec.outcome == OpOutcome::Ok) {
      LocalJob j;
      j.job_id = id;
      j.node = name_;
      j.pid = pid;
      j.generation = rec.generation;
      char st = 0;
      if (!proc_stat(j.pid, st, j.start_ticks))
        j.start_ticks = 0;  // a very short job, ended already
      rec.pid = pid;
      try {
        persist(j);
      } catch (const std::exception& e) {
        spdlog::warn("job {}: {}", id, e.what());
      }
      std::lock_guard l(mu_);
      jobs_[id] = j;
    }
  }
  // The engine's exit code says whose fault it was; an engine that succeeded but left
  // no pid file, or no result at all, tells nothing against the image.
  if (rec.outcome != OpOutcome::Ok && rec.failure.empty())
    rec.failure = to_string(engine_ok ? FailureClass::kTransient : failure_of(res));
  rec.phase = OpPhase::Done;
  try {
    oplog_.put(rec);
  } catch (const std::exception& e) {
    spdlog::warn("job {}: {}", id, e.what());
  }
  {
    std::lock_guard l(mu_);
    ops_[id] = rec;
  }
  if (rec.outcome == OpOutcome::Ok)
    spdlog::info("job {}: {} done{}", id, to_string(rec.kind),
                 rec.is_dump() ? fmt::format(": {} bytes at {}", rec.size, rec.image_dir)
                               : fmt::format(": init {}", rec.pid));
  else
    spdlog::warn("job {}: {} {}: {}", id, to_string(rec.kind),
                 rec.outcome == OpOutcome::Timeout ? "timed out" : "failed", rec.error);
}

void NodeDaemon::recover_op(OpRecord rec) {
  int64_t id = rec.job_id;
  spdlog::info("job {}: {} was under way when fschedd stopped: waiting for it", id,
               to_string(rec.kind));
  for (;;) {
    {
      std::lock_guard l(mu_);
      if (stopping_) return;
    }
    try {
      // The runner holds the lock for as long as it lives.
      if (UniqueFd lock = oplog_.try_lock(id)) break;
    } catch (const std::exception& e) {
      spdlog::warn("job {}: {}", id, e.what());
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  finish_op(rec, oplog_.result(id));
}

void NodeDaemon::supersede_done_op(int64_t id) {
  auto op = ops_.find(id);
  if (op == ops_.end() || op->second.phase != OpPhase::Done) return;
  // The controller asks something new of this job, which it does only once it holds
  // the previous operation's outcome (a checkpoint it waits for keeps the job busy, a
  // start it waits for keeps it from new requests): the unsent report is moot.
  if (op->second.kind == OpKind::Vacate && op->second.outcome == OpOutcome::Ok)
    jobs_.erase(id);  // the dumped run is gone and its files too (finish_op made sure)
  ops_.erase(op);
  oplog_.remove(id);
}

void NodeDaemon::report_ops() {
  std::vector<OpRecord> done;
  {
    std::lock_guard l(mu_);
    for (auto& [id, op] : ops_)
      if (op.phase == OpPhase::Done) done.push_back(op);
  }
  for (auto& op : done) {
    try {
      json body = op.report();
      body["name"] = name_;
      controller(10).call("POST", "/v1/nodes/op_done", body);
    } catch (const std::exception& e) {
      // The controller is away: the outcome waits in the op record.
      spdlog::debug("job {}: {} outcome not reported yet: {}", op.job_id, to_string(op.kind),
                    e.what());
      continue;
    }
    std::lock_guard l(mu_);
    auto it = ops_.find(op.job_id);
    if (it == ops_.end() || it->second.phase != OpPhase::Done || it->second.started != op.started)
      continue;
    ops_.erase(it);
    oplog_.remove(op.job_id);
    if (op.kind == OpKind::Vacate && op.outcome == OpOutcome::Ok) jobs_.erase(op.job_id);
  }
}

}  // namespace fsched::noded
