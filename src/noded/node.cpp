#include "noded/node.h"

#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <limits>
#include <sstream>
#include <thread>

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/meminfo.h"
#include "common/failure.h"
#include "proto/json_number.h"
#include "noded/node_internal.h"
#include "noded/spawn.h"

namespace fsched::noded {
namespace {

using proto::RpcError;
namespace fs = std::filesystem;

}  // namespace

namespace node_detail {

std::string read_file(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// State letter and start time of a process, from /proc/PID/stat (proc(5)).
bool proc_stat(pid_t pid, char& state, unsigned long long& start_ticks) {
  std::string s = read_file(fmt::format("/proc/{}/stat", pid));
  auto rp = s.rfind(')');
  if (rp == std::string::npos) return false;
  std::istringstream in(s.substr(rp + 2));
  in >> state;
  std::string skip;
  for (int i = 4; i < 22; ++i) in >> skip;  // fields 4..21
  return static_cast<bool>(in >> start_ticks);
}

bool alive(const LocalJob& j) {
  char st = 0;
  unsigned long long t = 0;
  if (!proc_stat(j.pid, st, t)) return false;
  return t == j.start_ticks && st != 'Z' && st != 'X';
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace node_detail

using namespace node_detail;

namespace {

void write_file(const fs::path& p, std::string_view text, mode_t mode) {
  fs::path tmp = p;
  tmp += ".tmp";
  {
    std::ofstream out(tmp, std::ios::trunc | std::ios::binary);
    if (!(out << text) || !out.flush()) fail_errno("cannot write {}", tmp.string());
  }
  if (::chmod(tmp.c_str(), mode) < 0) fail_errno("chmod {}", tmp.string());
  fs::rename(tmp, p);
}

// The reply to an operation that did not succeed: 504 for a timeout, else the status of
// its failure class (http_status_of), the class also in the body for the controller.
RpcError op_error(const OpRecord& rec, const std::string& msg) {
  FailureClass c = failure_class_from_string(rec.failure).value_or(FailureClass::kTransient);
  return RpcError(rec.outcome == OpOutcome::Timeout ? 504 : http_status_of(c), msg, c);
}

double read_loadavg() {
  std::ifstream in("/proc/loadavg");
  double l = 0;
  in >> l;
  return l;
}

// Busy and iowait shares of all CPU time since the previous call (proc(5): /proc/stat
// "cpu" line: user nice system idle iowait irq softirq steal).
std::pair<double, double> cpu_and_iowait() {
  static std::mutex mu;
  static unsigned long long last_total = 0, last_idle = 0, last_iowait = 0;
  std::ifstream in("/proc/stat");
  std::string cpu;
  unsigned long long v[8] = {};
  in >> cpu;
  for (auto& x : v) in >> x;
  unsigned long long total = 0;
  for (auto x : v) total += x;
  std::lock_guard l(mu);
  unsigned long long dt = total - last_total, di = v[3] - last_idle, dw = v[4] - last_iowait;
  bool first = last_total == 0;
  last_total = total;
  last_idle = v[3];
  last_iowait = v[4];
  if (first || dt == 0) return {0.0, 0.0};
  return {1.0 - static_cast<double>(di + dw) / static_cast<double>(dt),
          static_cast<double>(dw) / static_cast<double>(dt)};
}

// The integer fields of the controller's requests, checked before a handler reads
// them with get<>(), which would truncate or wrap an out-of-range value (a uid of -1
// becoming 4294967295) (issue 10, item 12). Absent fields are the handlers' concern.
void check_integers(const nlohmann::json& b) {
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  constexpr int64_t kMaxUid =
      std::numeric_limits<uint32_t>::max() - 1;  // (uid_t)-1 means "no change"
  proto::int_field(b, "job_id", 1, 1, kMax);
  proto::int_field(b, "uid", 0, 0, kMaxUid);
  proto::int_field(b, "gid", 0, 0, kMaxUid);
  proto::int_field(b, "signal", SIGTERM, 1, 64);
  proto::int_field(b, "kill_wait", -1, -1, 86400);
  proto::int_field(b, "timeout", 1, 1, 7 * 86400);
}

}  // namespace

LaunchRequest decode_launch(const nlohmann::json& q, bool restore) {
  LaunchRequest d = q.get<LaunchRequest>();
  if (restore) {
    if (d.restore_dir.empty())
      throw RpcError(400, "a restore needs restore_dir, the image to restore");
    // The restored processes have their own environment; the restorer needs a PATH only.
    d.env = {{"PATH", "/usr/bin:/bin"}};
  } else {
    if (!d.restore_dir.empty())
      throw RpcError(400, "a launch takes no restore_dir (POST /v1/node/restore does)");
    if (!d.env.count("PATH")) d.env["PATH"] = "/usr/local/bin:/usr/bin:/bin";
  }
  return d;
}

CheckpointRequest decode_checkpoint(const nlohmann::json& q, int default_timeout) {
  CheckpointRequest d = q.get<CheckpointRequest>();
  if (d.timeout == 0) d.timeout = default_timeout;  // absent (check_integers refuses an explicit 0)
  return d;
}

SignalRequest decode_signal(const nlohmann::json& q) { return q.get<SignalRequest>(); }

namespace {
// The spool directory must exist before the operation log inside it is opened.
fs::path ready_spool(const proto::Config& cfg) {
  std::error_code ec;
  fs::create_directories(cfg.slurmd_spool_dir, ec);
  if (ec) fail("cannot create SlurmdSpoolDir {}: {}", cfg.slurmd_spool_dir.string(), ec.message());
  // Jobs run as their users exec <spool>/job<ID>/slurm_script by its path, so the
  // directory must let them through (x); it lets nobody but root list it or read the
  // state files in it (job.json is 0600) (issue 10, item 14).
  if (::chmod(cfg.slurmd_spool_dir.c_str(), 0711) < 0)
    fail_errno("cannot chmod SlurmdSpoolDir {}", cfg.slurmd_spool_dir.string());
  return cfg.slurmd_spool_dir;
}

}  // namespace

NodeDaemon::NodeDaemon(proto::Config cfg, std::string name)
    // One operation log per node: nodes of a test cluster on one host share the spool
    // directory, and one node's log must never name another's operations.
    : cfg_(std::move(cfg)), name_(std::move(name)), oplog_(ready_spool(cfg_) / ("ops-" + name_)) {
  me_ = cfg_.node(name_);
  if (!me_) fail("node {} has no NodeName line in {}", name_, cfg_.file.string());
  jobs_cg_ = make_jobs_cgroup(name_);
  lease_ = std::make_unique<Lease>(jobs_cg_.path() / "cgroup.freeze");
}

void NodeDaemon::start_guard() { lease_->start_guard(); }

NodeDaemon::~NodeDaemon() { stop(); }

std::string NodeDaemon::ckpt_tool() const {
  if (!cfg_.ckpt_tool.empty()) return cfg_.ckpt_tool;
  fs::path self = fs::read_symlink("/proc/self/exe").parent_path();
  for (auto p : {self / "fsched-ckpt", self / ".." / "tools" / "fsched-ckpt"})
    if (::access(p.c_str(), X_OK) == 0) return fs::weakly_canonical(p).string();
  fail("cannot find fsched-ckpt beside {} (set FschedCkptPath in {})", self.string(),
       cfg_.file.string());
}

fs::path NodeDaemon::job_dir(int64_t id) const {
  return cfg_.slurmd_spool_dir / fmt::format("job{}", id);
}

proto::Client NodeDaemon::controller(int timeout_s) const {
  return proto::Client(cfg_.control_addr, cfg_.control_port, cfg_.munge_socket, timeout_s,
                       cfg_.munge_ttl);
}

void NodeDaemon::persist(const LocalJob& j) const {
  // What a restarted fschedd finds its jobs by: on disk before anyone is told the job runs.
  write_durably(job_dir(j.job_id) / "job.json", nlohmann::json(j).dump(), 0600);
}

void NodeDaemon::add_routes(proto::Server& s) {
  auto root_only = [](auto fn) {
    return [fn](const proto::Request& r) {
      if (!r.caller.is_root())
        throw RpcError(403, "only the controller (root) may ask this of fschedd");
      check_integers(r.body);
      return fn(r);
    };
  };
  s.route("POST", "/v1/node/launch",
          root_only([this](const proto::Request& r) { return launch(r, false); }));
  s.route("POST", "/v1/node/restore",
          root_only([this](const proto::Request& r) { return launch(r, true); }));
  s.route("POST", "/v1/node/checkpoint",
          root_only([this](const proto::Request& r) { return checkpoint(r); }));
  s.route("POST", "/v1/node/signal",
          root_only([this](const proto::Request& r) { return signal(r); }));
  s.route("POST", "/v1/node/suspend",
          root_only([this](const proto::Request& r) { return suspend(r); }));
  s.route("GET", "/v1/node/jobs", [this](const proto::Request& r) { return list(r); });
}

void NodeDaemon::prepare_job_dir(const LaunchRequest& req) {
  fs::path dir = job_dir(req.job_id);
  fs::create_directories(dir);
  ::chmod(dir.c_str(), 0711);  // traversable to reach the script, not listable
  fs::path script = dir / "slurm_script";
  // A restored shell holds the script open and reads it by offset: on the node
  // where it ran the file stays as it is.
  if (!fs::exists(script)) {
    write_file(script, req.script, 0700);
    if (::chown(script.c_str(), req.uid, req.gid) < 0) fail_errno("chown {}", script.string());
  }
  fs::remove(dir / "status");
  fs::remove(dir / "init.pid");
}

nlohmann::json NodeDaemon::launch(const proto::Request& r, bool restore) {
  const LaunchRequest q = decode_launch(r.body, restore);
  int64_t id = q.job_id;
  {
    std::lock_guard l(mu_);
    check_fencing_locked(q);
    supersede_done_op(id);
    if (ops_.count(id))
      throw RpcError(409, fmt::format("job {}: a {} is in progress on {}", id,
                                      to_string(ops_.at(id).kind), name_));
    // Never twice: a run of this job that this node still knows (running, or ended and
    // not yet reported) must be gone first.
    if (jobs_.count(id))
      throw RpcError(409, fmt::format("job {} is already on node {}", id, name_));
    ops_[id] = OpRecord{.job_id = id};  // reserved: a second launch waits for this one
  }
  fs::path dir = job_dir(id);
  std::vector<std::string> argv;
  OpRecord rec{.job_id = id,
               .kind = restore ? OpKind::Restore : OpKind::Launch,
               .node = name_,
               .timeout_s = cfg_.batch_start_timeout + 600,
               .started = unix_now(),
               .generation = q.generation};
  fs::path cgroup;
  try {
    // The run's cgroup first: the engine starts inside it (and so does all it starts).
    fs::path path = jobs_cg_.path() / run_cgroup_name(id, q.generation);
    {
      // The same name as a run that just ended (a restore right after its vacate, with
      // generation 0 from a controller that predates generations): taken over, no
      // longer to be removed.
      std::lock_guard l(mu_);
      for (auto& e : ending_)
        if (e.path() == path) e.release();
    }
    std::error_code ec;
    if (fs::exists(path, ec)) {
      // Processes in it: the ended run's, still dying, or a run this fschedd lost track
      // of. The directory is removed and made anew: a process entering a cgroup just
      // after its cgroup.kill can still be killed by it (seen on 6.18).
      Cgroup old(path);
      if (old.populated()) old.kill();
      if (!old.kill_and_remove(std::chrono::seconds(5)))
        throw RpcError(
            503,
            fmt::format("job {}: processes of an earlier run are still in {}", id, path.string()),
            FailureClass::kTransient);
    }
    Cgroup cg(path);
    cgroup = cg.path();
    std::lock_guard l(mu_);
    run_cg_[id] = RunCgroup{q.generation, std::move(cg)};
  } catch (...) {
    std::lock_guard l(mu_);
    ops_.erase(id);
    throw;
  }
  try {
    prepare_job_dir(q);
    argv.push_back(ckpt_tool());
    if (restore) {
      rec.image_dir = q.restore_dir;
      argv.insert(argv.end(), {"restore", "--detach", "--pidfile", (dir / "init.pid").string(),
                               "--dir", rec.image_dir});
    } else {
      argv.insert(argv.end(),
                  {"run", "--detach", "--pidfile", (dir / "init.pid").string(), "--status-file",
                   (dir / "status").string(), "--stdout", q.stdout_path, "--stderr", q.stderr_path,
                   "--cwd", q.work_dir, "--user", q.user, "--", (dir / "slurm_script").string()});
      for (auto& a : q.argv) argv.push_back(a);
    }
  } catch (...) {
    std::lock_guard l(mu_);
    ops_.erase(id);
    end_run_cgroup(id);
    throw;
  }
  try {
    rec = run_op(std::move(rec), argv, q.env, cgroup);
  } catch (...) {
    std::lock_guard l(mu_);
    end_run_cgroup(id);
    throw;
  }
  if (rec.outcome != OpOutcome::Ok)
    throw op_error(rec, fmt::format("{} of job {} on {} failed: {}", restore ? "restore" : "launch",
                                    id, name_, rec.error));
  return {{"pid", rec.pid}};
}

nlohmann::json NodeDaemon::checkpoint(const proto::Request& r) {
  const CheckpointRequest q = decode_checkpoint(r.body, cfg_.checkpoint_timeout);
  int64_t id = q.job_id;
  const std::string& dir = q.dir;
  bool leave = q.leave_running;
  int timeout = q.timeout;
  pid_t pid;
  // A frozen job cannot be dumped (the dumper's ptrace requests would wait for the
  // thaw), and a node without a lease must not make new state for the controller.
  if (lease_->frozen() || lease_->expired())
    throw RpcError(503, fmt::format("node {}'s lease expired: jobs frozen", name_),
                   FailureClass::kTransient);
  {
    std::lock_guard l(mu_);
    supersede_done_op(id);
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second.ended)
      throw RpcError(409, fmt::format("job {} is not running on {}", id, name_));
    if (it->second.vacating) throw RpcError(409, fmt::format("job {} is being vacated", id));
    if (ops_.count(id))
      throw RpcError(409,
                     fmt::format("job {}: a {} is in progress", id, to_string(ops_.at(id).kind)));
    if (!leave) it->second.vacating = true;
    pid = it->second.pid;
    ops_[id] = OpRecord{.job_id = id};  // reserved
  }
  fs::path parent = fs::path(dir).parent_path();
  std::error_code ec;
  fs::create_directories(parent, ec);
  // Images hold the job's memory: root only (DESIGN.md, issue 4).
  ::chmod(parent.c_str(), 0700);
  if (ec || !fs::is_directory(parent)) {
    std::lock_guard l(mu_);
    ops_.erase(id);
    if (auto it = jobs_.find(id); it != jobs_.end()) it->second.vacating = false;
    throw RpcError(500, fmt::format("cannot create checkpoint directory {}: {}", parent.string(),
                                    ec.message()));
  }
  std::vector<std::string> argv{ckpt_tool(), "dump", "--pid", std::to_string(pid),
                                "--dir",     dir,    "--json"};
  if (leave) argv.push_back("--leave-running");
  if (q.track_mem) argv.push_back("--track-mem");
  // Incremental on an earlier checkpoint of the same job, beside it (decode_checkpoint).
  if (!q.parent.empty()) argv.insert(argv.end(), {"--parent", q.parent});
  if (!q.track_method.empty()) argv.insert(argv.end(), {"--track-method", q.track_method});
  // CRIU_PreDump: the memory is copied while the job runs; the dump in the freeze then
  // stores only what changed since. A failed pre-dump costs only its time: the dump is
  // then full.
  uint64_t pre_bytes = 0;
  if (q.pre_dump_delay >= 0 && q.parent.empty()) {
    const std::string pre = dir + ".pre";
    fs::remove_all(pre, ec);
    fs::remove_all(pre + ".tmp", ec);
    std::string why;
    try {
      std::vector<std::string> pre_argv{ckpt_tool(), "pre-dump", "--pid", std::to_string(pid),
                                        "--dir",     pre,        "--json"};
      if (!q.track_method.empty())
        pre_argv.insert(pre_argv.end(), {"--track-method", q.track_method});
      SpawnResult res = spawn_wait(pre_argv, {{"PATH", "/usr/bin:/bin"}}, timeout);
      if (res.exit_code() == 0 && !res.timed_out) {
        json st = json::parse(res.out, nullptr, false);
        pre_bytes = st.is_object() ? st.value("image_bytes", uint64_t{0}) : 0;
        if (!pre_bytes) pre_bytes = 1;  // made, size unknown
      } else {
        why = res.timed_out ? "it took longer than CheckpointTimeout" : res.error_line();
      }
    } catch (const std::exception& e) {
      why = e.what();
    }
    if (pre_bytes) {
      std::this_thread::sleep_for(std::chrono::seconds(q.pre_dump_delay));
      argv.insert(argv.end(), {"--parent", pre});
    } else {
      spdlog::warn("job {}: pre-dump failed ({}); dumping without it", id, why);
      fs::remove_all(pre, ec);
      fs::remove_all(pre + ".tmp", ec);
    }
  }
  spdlog::info("job {}: dumping to {} ({})", id, dir, leave ? "leave running" : "vacate");
  OpRecord rec{.job_id = id,
               .kind = leave ? OpKind::Checkpoint : OpKind::Vacate,
               .node = name_,
               .image_dir = dir,
               .timeout_s = timeout,
               .started = unix_now(),
               .pre_dump_bytes = pre_bytes};
  rec = run_op(std::move(rec), argv, {{"PATH", "/usr/bin:/bin"}});
  if (rec.outcome != OpOutcome::Ok) throw op_error(rec, rec.error);
  return {{"size", rec.size},
          {"freeze_ms", rec.freeze_ms},
          {"dump_ms", rec.dump_ms},
          {"image_kind", rec.image_kind},
          {"pre_dump_bytes", rec.pre_dump_bytes}};
}

nlohmann::json NodeDaemon::signal(const proto::Request& r) {
  const SignalRequest q = decode_signal(r.body);
  int64_t id = q.job_id;
  int sig = q.signal;
  int kill_wait = q.kill_wait;
  LocalJob j;
  {
    std::lock_guard l(mu_);
    auto it = jobs_.find(id);
    if (it == jobs_.end() || it->second.ended)
      throw RpcError(409, fmt::format("job {} is not running on {}", id, name_));
    j = it->second;
  }
  // fsched-init passes the signal on to the job's process group.
  if (alive(j) && ::kill(j.pid, sig) < 0)
    throw RpcError(500, fmt::format("kill({}, {}): {}", j.pid, sig, strerror(errno)));
  spdlog::info("job {}: signal {} sent to init {}", id, sig, j.pid);
  if (kill_wait >= 0) {
    std::thread([j, kill_wait] {
      auto end = std::chrono::steady_clock::now() + std::chrono::seconds(kill_wait);
      while (std::chrono::steady_clock::now() < end && alive(j))
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
      if (alive(j)) {
        spdlog::info("job {}: still running after KillWait ({} s): SIGKILL", j.job_id, kill_wait);
        ::kill(j.pid, SIGKILL);
      }
    }).detach();
  }
  return json::object();
}

nlohmann::json NodeDaemon::list(const proto::Request&) {
  std::lock_guard l(mu_);
  json arr = json::array();
  for (auto& [id, j] : jobs_)
    arr.push_back({{"job_id", id},
                   {"generation", j.generation},
                   {"pid", j.pid},
                   {"running", !j.ended},
                   {"exit_status", j.exit_status}});
  return {{"jobs", arr}};
}

void NodeDaemon::adopt(const fs::path& spool) {
  std::error_code ec;
  for (auto& e : fs::directory_iterator(spool, ec)) {
    auto f = e.path() / "job.json";
    if (!fs::exists(f)) continue;
    try {
      LocalJob j = json::parse(read_file(f)).get<LocalJob>();
      if (j.node != name_) continue;
      // A job being vacated (or vacated, the controller not told yet): its death is
      // the vacate's doing, not a lost node; the operation's outcome decides.
      auto op = ops_.find(j.job_id);
      j.vacating = op != ops_.end() && op->second.kind == OpKind::Vacate &&
                   (op->second.phase == OpPhase::Running || op->second.outcome == OpOutcome::Ok);
      if (!j.ended && !j.vacating && !alive(j) && read_file(e.path() / "status").empty()) {
        j.ended = j.lost = true;
        j.exit_status = 128 + SIGKILL;
        persist(j);
      }
      jobs_[j.job_id] = j;
      if (!j.ended) {
        try {
          run_cg_[j.job_id] = RunCgroup{
              j.generation, Cgroup(jobs_cg_.path() / run_cgroup_name(j.job_id, j.generation))};
        } catch (const std::exception& ex) {
          spdlog::warn("job {}: {}", j.job_id, ex.what());
        }
      }
      spdlog::info("job {}: found again (init {}, {})", j.job_id, j.pid,
                   alive(j) ? "running"
                   : j.lost ? "lost: dead without an exit status"
                            : "ended");
    } catch (const std::exception& ex) {
      spdlog::warn("{}: unreadable, ignored: {}", f.string(), ex.what());
    }
  }
}

nlohmann::json NodeDaemon::status() const {
  json jobs = json::array(), ops = json::array();
  {
    std::lock_guard l(mu_);
    for (auto& [id, j] : jobs_)
      jobs.push_back({{"job_id", id},
                      {"generation", j.generation},
                      {"running", !j.ended},
                      {"vacating", j.vacating}});
    // Operations under way or not yet reported: the controller keeps their
    // checkpoints Creating and their jobs in place until it has the outcome.
    for (auto& [id, op] : ops_) ops.push_back(op.report());
  }
  long cpus = ::sysconf(_SC_NPROCESSORS_ONLN);
  auto [cpu_util, io_wait] = cpu_and_iowait();
  uint64_t total = meminfo_kib("MemTotal:") / 1024, avail = meminfo_kib("MemAvailable:") / 1024;
  double mem_util = total ? 1.0 - static_cast<double>(avail) / static_cast<double>(total) : 0.0;
  return {{"name", name_},
          {"cpus", me_->cpus},
          {"host_cpus", cpus},
          {"real_memory", me_->real_memory},
          {"free_memory", avail},
          {"load", read_loadavg()},
          {"cpu_util", cpu_util},
          {"io_wait", io_wait},
          {"mem_util", mem_util},
          {"jobs", jobs},
          {"ops", ops}};
}

void NodeDaemon::start() {
  std::vector<OpRecord> unfinished;
  {
    std::lock_guard l(mu_);
    for (auto& op : oplog_.load()) {
      if (op.node != name_) continue;  // not ours (a record copied from elsewhere)
      ops_[op.job_id] = op;
      if (op.phase == OpPhase::Running) unfinished.push_back(op);
      // A launch or restore under way: its engine runs in the run's cgroup.
      if (op.phase == OpPhase::Running && !op.is_dump()) {
        try {
          run_cg_[op.job_id] = RunCgroup{
              op.generation, Cgroup(jobs_cg_.path() / run_cgroup_name(op.job_id, op.generation))};
        } catch (const std::exception& e) {
          spdlog::warn("job {}: {}", op.job_id, e.what());
        }
      }
    }
    adopt(cfg_.slurmd_spool_dir);
    // Run cgroups of runs this node no longer knows (a spool directory wiped, an
    // earlier fschedd killed between killing a run and removing its cgroup): strays.
    std::set<fs::path> known;
    for (auto& [id, rc] : run_cg_) known.insert(rc.cg.path());
    std::error_code ec;
    for (auto& e : fs::directory_iterator(jobs_cg_.path(), ec)) {
      if (!e.is_directory() || known.count(e.path())) continue;
      try {
        Cgroup stray(e.path());
        if (stray.populated())
          spdlog::warn("{}: processes of a run this node does not know: killed", e.path().string());
        stray.kill();
        ending_.push_back(std::move(stray));
      } catch (const std::exception& ex) {
        spdlog::warn("{}", ex.what());
      }
    }
  }
  // Operations a killed fschedd left running: their runners go on without us; wait
  // for each and take its outcome as if we had never stopped.
  for (auto& op : unfinished) recoverers_.emplace_back([this, op] { recover_op(op); });
  watcher_ = std::thread([this] { watch(); });
  beater_ = std::thread([this] { heartbeat(); });
}

void NodeDaemon::stop() {
  {
    std::lock_guard l(mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (watcher_.joinable()) watcher_.join();
  if (beater_.joinable()) beater_.join();
  for (auto& t : recoverers_)
    if (t.joinable()) t.join();
}

void NodeDaemon::watch() {
  for (;;) {
    std::vector<LocalJob> to_report;
    {
      std::lock_guard l(mu_);
      if (stopping_) return;
      for (auto& [id, j] : jobs_) {
        if (j.vacating) continue;
        if (!j.ended && !alive(j)) {
          j.ended = true;
          std::string s = read_file(job_dir(id) / "status");
          // No status file: the init itself was killed (scancel's SIGKILL).
          j.exit_status = s.empty() ? 128 + SIGKILL : std::stoi(s);
          spdlog::info("job {}: ended with status {}", id, j.exit_status);
          try {
            persist(j);
          } catch (const std::exception& e) {
            spdlog::warn("job {}: {}", id, e.what());
          }
          // The run is over: nothing it started may outlive it.
          end_run_cgroup(id);
        }
        if (j.ended) to_report.push_back(j);
      }
    }
    report_ops();
    remove_ended_cgroups();
    for (auto& j : to_report) {
      try {
        controller(10).call("POST", "/v1/nodes/job_ended",
                            {{"name", name_},
                             {"job_id", j.job_id},
                             {"exit_status", j.exit_status},
                             {"lost", j.lost}});
        std::lock_guard l(mu_);
        jobs_.erase(j.job_id);
        std::error_code ec;
        fs::remove_all(job_dir(j.job_id), ec);
      } catch (const std::exception& e) {
        // The controller is away: the report waits in the spool directory.
        spdlog::debug("job {}: end not reported yet: {}", j.job_id, e.what());
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

void NodeDaemon::heartbeat() {
  bool registered = false;
  auto last = std::chrono::steady_clock::now() - std::chrono::hours(1);
  for (;;) {
    {
      std::lock_guard l(mu_);
      if (stopping_) return;
    }
    auto now = std::chrono::steady_clock::now();
    // Until the controller has heard of us, knock every second.
    auto period =
        registered ? std::chrono::seconds(cfg_.heartbeat_interval) : std::chrono::seconds(1);
    try {
      if (lease_->ensure_guard())
        spdlog::warn("the lease guard had died: started again (pid {})", lease_->guard_pid());
    } catch (const std::exception& e) {
      spdlog::error("{}", e.what());
    }
    log_lease();
    if (now - last >= period) {
      last = now;
      proto::HeartbeatReply reply;
      bool ok = false;
      // The lease counts from the send: the controller counts from the receipt, later.
      auto sent = Lease::Clock::now();
      try {
        json body = status();
        reply = controller(10)
                    .call("POST", registered ? "/v1/nodes/heartbeat" : "/v1/nodes/register", body)
                    .get<proto::HeartbeatReply>();
        ok = true;
        if (!registered)
          spdlog::info("registered with the controller at {}:{}", cfg_.control_addr,
                       cfg_.control_port);
        registered = true;
      } catch (const std::exception& e) {
        if (registered) spdlog::warn("heartbeat to the controller failed: {}", e.what());
        registered = false;
      }
      if (ok) {
        try {
          on_heartbeat_reply(reply, sent);
        } catch (const std::exception& e) {
          spdlog::error("heartbeat reply: {}", e.what());
        }
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

}  // namespace fsched::noded
