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

namespace fsched::ctld {
namespace {

using proto::RpcError;

double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string user_name(uid_t uid) {
  if (passwd* pw = ::getpwuid(uid)) return pw->pw_name;
  return std::to_string(uid);
}

// %j and %x in output paths, as sbatch's filename patterns.
std::string expand_pattern(std::string_view pat, const Job& j) {
  std::string out;
  for (size_t i = 0; i < pat.size(); ++i) {
    if (pat[i] == '%' && i + 1 < pat.size()) {
      char c = pat[i + 1];
      if (c == 'j' || c == 'A') {
        out += std::to_string(j.job_id);
        ++i;
        continue;
      }
      if (c == 'x') {
        out += j.name;
        ++i;
        continue;
      }
      if (c == 'u') {
        out += j.user;
        ++i;
        continue;
      }
      if (c == '%') {
        out += '%';
        ++i;
        continue;
      }
    }
    out += pat[i];
  }
  return out;
}

template <typename T>
T field(const nlohmann::json& b, const char* key, T dflt) {
  if (!b.is_object() || !b.contains(key) || b[key].is_null()) return dflt;
  if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>)
    if (!proto::json_number_fits<T>(b[key]))
      throw RpcError(400, fmt::format("field '{}' is out of range: {}", key, b[key].dump()));
  try {
    return b[key].get<T>();
  } catch (const nlohmann::json::exception&) {
    throw RpcError(400, fmt::format("field '{}' has the wrong type", key));
  }
}

// Bounds of the integer fields of requests (issue 10, item 12). A node has at most
// 2^20 CPUs (NodeName CPUs= in fsched.conf), so a job can ask for no more, and their
// product always fits an int.
constexpr int64_t kMaxCpus = int64_t{1} << 20;
constexpr int64_t kMaxMemMb = int64_t{1} << 40;    // as RealMemory
constexpr int64_t kMaxSeconds = int64_t{1} << 40;  // time limits and intervals
constexpr int64_t kMaxId = std::numeric_limits<int64_t>::max();

}  // namespace

Controller::Controller(proto::Config cfg, std::unique_ptr<NodeClient> node_rpc)
    : cfg_(std::move(cfg)),
      node_rpc_(node_rpc ? std::move(node_rpc) : rpc_node_client(cfg_)),
      store_(cfg_.state_save_location) {
  for (auto& j : store_.jobs()) jobs_[j.job_id] = std::move(j);
  for (auto& c : store_.checkpoints()) {
    // A dump the previous controller was waiting for goes on (or ended) on its node,
    // which keeps its outcome until it has reported it: the checkpoint stays Creating
    // and the job busy until then (or until the node shows it has no such dump).
    if (c.status == CheckpointStatus::Creating) ckpt_busy_.insert(c.job_id);
    ckpts_[c.job_id].push_back(c);
  }
  for (auto& n : cfg_.nodes) {
    Node node;
    node.name = n.name;
    node.addr = n.addr;
    node.port = n.port;
    node.cpus = n.cpus;
    node.real_memory = n.real_memory;
    node.free_memory = n.real_memory;
    nodes_[n.name] = node;
  }
  // Resources held by jobs that were running when the controller stopped.
  for (auto& [id, j] : jobs_) {
    if (j.state != JobState::Running) continue;
    if (auto it = nodes_.find(j.nodes); it != nodes_.end()) {
      it->second.alloc_cpus += j.num_cpus();
      it->second.alloc_memory += j.mem_mb;
      // The node is presumed up until its heartbeats say otherwise.
      it->second.last_heartbeat = now_s();
    }
  }
  // What loading parsed is garbage now; give it back to the system.
  ::malloc_trim(0);
  spdlog::info("controller: {} jobs and {} checkpoints loaded from {}", jobs_.size(),
               store_.checkpoints().size(), (cfg_.state_save_location / "fsched.db").string());
}

Controller::~Controller() { stop(); }

namespace {
// The reason of a checkpoint marked Failed because a restore from it failed. Its
// image is kept (see launch_failed); Failed dumps and Timeouts are removed.
constexpr std::string_view kRestoreFailedPrefix = "restore failed: ";
bool kept_after_failed_restore(const Checkpoint& c) {
  return c.reason.starts_with(kRestoreFailedPrefix);
}

// Transient failures of the restore from one checkpoint after which it counts as
// Failed: never a loop, and three tries (on other nodes when there are) are enough to
// tell a passing cause from a lasting one that the engine could not classify.
constexpr int kMaxTransientRestores = 3;
// Seconds before the n-th retry: n times this, time for a passing cause to pass.
constexpr double kRestoreRetryDelayS = 5;

// A failure's reason with its class in front (docs/failures.md), so that `scontrol
// checkpoint list` says whose fault it was; an unclassified one as it came.
std::string classified(std::optional<FailureClass> c, const std::string& why) {
  return c ? fmt::format("{} failure: {}", to_string(*c), why) : why;
}

// The "failure" field of a node's report: none if absent or unknown to this build.
std::optional<FailureClass> failure_field(const nlohmann::json& b) {
  if (!b.is_object() || !b.contains("failure") || !b["failure"].is_string()) return std::nullopt;
  return failure_class_from_string(b["failure"].get<std::string>());
}
}  // namespace

void Controller::start() {
  {
    // Images of Failed, Timeout and Cleared checkpoints, and DIR.tmp leftovers of settled ones,
    // that an earlier controller did not get to remove. Only the list is made under
    // mu_; the file system is looked at by a worker (storage may be slow or large).
    Lock l(mu_);
    std::vector<std::pair<std::string, bool>> sweep;  // location, whole image (else DIR.tmp only)
    for (auto& [id, list] : ckpts_)
      for (auto& c : list)
        if (c.status != CheckpointStatus::Creating && !c.location.empty())
          sweep.emplace_back(
              c.location,
              c.status == CheckpointStatus::Timeout || c.status == CheckpointStatus::Cleared ||
                  (c.status == CheckpointStatus::Failed && !kept_after_failed_restore(c)));
    spawn([sweep = std::move(sweep)] {
      for (auto& [loc, whole] : sweep) {
        std::error_code ec;
        if (whole && std::filesystem::exists(loc, ec)) {
          std::filesystem::remove_all(loc, ec);
          if (ec) spdlog::warn("cannot remove the image {}: {}", loc, ec.message());
        }
        if (std::filesystem::exists(loc + ".tmp", ec))
          std::filesystem::remove_all(loc + ".tmp", ec);
      }
    });
  }
  loop_ = std::thread([this] {
    Lock l(mu_);
    while (!stopping_) {
      try {
        schedule();
        periodic();
      } catch (const std::exception& e) {
        spdlog::error("scheduler: {}", e.what());
      }
      wake_.wait_for(l, std::chrono::milliseconds(250));
    }
  });
}

void Controller::stop() {
  {
    Lock l(mu_);
    if (stopping_) return;
    stopping_ = true;
    wake_.notify_all();
  }
  if (loop_.joinable()) loop_.join();
  Lock l(mu_);
  workers_done_.wait(l, [this] { return workers_ == 0; });
}

void Controller::spawn(std::function<void()> fn) {
  ++workers_;
  std::thread([this, fn = std::move(fn)] {
    try {
      fn();
    } catch (const std::exception& e) {
      spdlog::error("worker: {}", e.what());
    }
    Lock l(mu_);
    if (--workers_ == 0) workers_done_.notify_all();
  }).detach();
}

namespace {
// fschedd over the authenticated RPC, at the NodeAddr:Port of fsched.conf (which does
// not change while the controller runs, so no lock is needed to look it up).
class RpcNodeClient final : public NodeClient {
 public:
  explicit RpcNodeClient(const proto::Config& cfg) : cfg_(cfg) {}
  nlohmann::json post(const std::string& node, std::string_view path, const nlohmann::json& body,
                      int timeout_s) override {
    const proto::NodeConf* n = cfg_.node(node);
    if (!n) fail("node {} is not in {}", node, cfg_.file.string());
    return proto::Client(n->addr, n->port, cfg_.munge_socket, timeout_s).call("POST", path, body);
  }

 private:
  const proto::Config& cfg_;
};
}  // namespace

std::unique_ptr<NodeClient> rpc_node_client(const proto::Config& cfg) {
  return std::make_unique<RpcNodeClient>(cfg);
}

void Controller::save(const Job& j) { store_.put_job(j); }
void Controller::save(const Checkpoint& c) { store_.put_checkpoint(c); }

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

nlohmann::json Controller::api(const Job& j) const {
  double now = now_s();
  int64_t run = j.run_time_done + (j.state == JobState::Running && j.start_time > 0
                                       ? static_cast<int64_t>(now - j.start_time)
                                       : 0);
  json last = nullptr;
  if (auto it = ckpts_.find(j.job_id); it != ckpts_.end() && !it->second.empty()) {
    auto& c = it->second.back();
    last = {{"checkpoint_id", c.checkpoint_id}, {"time", c.trigger_time}, {"status", c.status}};
  }
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
           (cfg_.slurmd_spool_dir / fmt::format("job{}", j.job_id) / "slurm_script").string()},
          {"argv", j.argv},
          {"checkpoint_interval", j.checkpoint_interval},
          {"checkpoint_dir", (cfg_.checkpoint_dir / std::to_string(j.job_id)).string()},
          {"requeue", j.requeue},
          {"hold", j.hold},
          {"restarts", j.restarts},
          {"job_version", j.job_version},
          {"exit_code", fmt::format("{}:{}", sig ? 0 : j.exit_status, sig)},
          {"last_checkpoint", last},
          {"restore_from", j.restore_from}};
}

// ------------------------------------------------------------------ routes

void Controller::add_routes(proto::Server& s) {
  auto bind = [this](auto fn) {
    return [this, fn](const proto::Request& r) { return (this->*fn)(r); };
  };
  s.route("GET", "/v1/ping", [this](const proto::Request&) {
    return json{{"cluster", cfg_.cluster_name}, {"time", now_s()}};
  });
  s.route("POST", "/v1/jobs", bind(&Controller::submit));
  s.route_raw("GET", "/v1/jobs", [this](const proto::Request& r) { return list_jobs(r); });
  s.route("GET", "/v1/jobs/{}", bind(&Controller::show_job));
  s.route("POST", "/v1/jobs/{}/signal", bind(&Controller::signal_job));
  s.route("POST", "/v1/jobs/{}/cancel", bind(&Controller::cancel_job));
  s.route("POST", "/v1/jobs/{}/hold",
          [this](const proto::Request& r) { return hold_job(r, true); });
  s.route("POST", "/v1/jobs/{}/release",
          [this](const proto::Request& r) { return hold_job(r, false); });
  s.route("POST", "/v1/jobs/{}/requeue", bind(&Controller::requeue_job));
  s.route("POST", "/v1/jobs/{}/checkpoint",
          [this](const proto::Request& r) { return checkpoint_job(r, CheckpointSource::Manual); });
  s.route("POST", "/v1/jobs/{}/vacate",
          [this](const proto::Request& r) { return checkpoint_job(r, CheckpointSource::Vacate); });
  s.route("POST", "/v1/jobs/{}/restart", bind(&Controller::restart_job));
  s.route("GET", "/v1/jobs/{}/checkpoints", bind(&Controller::list_checkpoints));
  s.route("DELETE", "/v1/jobs/{}/checkpoints/{}", bind(&Controller::delete_checkpoint));
  s.route("GET", "/v1/nodes", bind(&Controller::list_nodes));
  s.route("GET", "/v1/partitions", bind(&Controller::list_partitions));
  s.route("POST", "/v1/nodes/register", bind(&Controller::node_heartbeat));
  s.route("POST", "/v1/nodes/heartbeat", bind(&Controller::node_heartbeat));
  s.route("POST", "/v1/nodes/job_ended", bind(&Controller::node_job_ended));
  s.route("POST", "/v1/nodes/op_done", bind(&Controller::node_op_done));
}

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
  j.requeue = field<bool>(b, "requeue", true);
  j.hold = field<bool>(b, "hold", false);
  json env = field<json>(b, "env", json::object());
  if (!env.is_object()) throw RpcError(400, "env must be an object of strings");
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
  // One job's JSON tree at a time: the whole list as a tree would cost the
  // controller ~10x the text's size.
  std::string out = R"({"jobs":[)";
  Lock l(mu_);
  bool first = true;
  for (auto& [id, j] : jobs_) {
    if (!wanted(j)) continue;
    if (!first) out += ',';
    first = false;
    out += api(j).dump();
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

void Controller::terminate(const Job& j, int signal, bool escalate) {
  std::string node = j.nodes;
  int64_t id = j.job_id;
  int wait = escalate ? cfg_.kill_wait : -1;
  spawn([this, node, id, signal, wait] {
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
  if (j.state == JobState::Pending) {
    j.state = JobState::Cancelled;
    j.reason = "None";
    j.end_time = now_s();
    j.restore_from = 0;
    save(j);
    spdlog::info("job {}: cancelled while pending by uid {}", j.job_id, r.caller.uid);
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
  if (j.state == JobState::Running) {
    j.end_request = "requeue";
    save(j);
    terminate(j, SIGTERM, true);
  } else if (j.state == JobState::Pending) {
    throw RpcError(409, fmt::format("Job {} is pending already", j.job_id));
  } else {
    requeue_fresh(j);
    save(j);
    wake_.notify_all();
  }
  spdlog::info("job {}: requeued (from scratch) by uid {}", j.job_id, r.caller.uid);
  return json::object();
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
  std::string node;
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
    c.description = description.empty()
                        ? (source == CheckpointSource::Periodic ? "periodic checkpoint"
                           : source == CheckpointSource::Vacate ? "created when the job was vacated"
                                                                : "created during running")
                        : description;
    c.trigger_time = now_s();
    c.job_version = j.job_version;
    c.location =
        (cfg_.checkpoint_dir / std::to_string(job_id) / std::to_string(c.checkpoint_id)).string();
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
        proto::CheckpointRequest{.job_id = job_id,
                                 .dir = c.location,
                                 .leave_running = source != CheckpointSource::Vacate,
                                 .timeout = cfg_.checkpoint_timeout},
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
                      reply.value("size", uint64_t{0}), reply.value("freeze_ms", 0.0));
  } else if (answered) {
    settle_checkpoint(job_id, c.checkpoint_id,
                      timeout ? CheckpointStatus::Timeout : CheckpointStatus::Failed,
                      timeout ? error : classified(failure, error), 0, 0.0);
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

bool Controller::settle_checkpoint(int64_t job_id, int64_t checkpoint_id, CheckpointStatus status,
                                   const std::string& reason, uint64_t size, double freeze_ms) {
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
  }
  save(c);
  ckpt_busy_.erase(job_id);
  auto jit = jobs_.find(job_id);
  if (jit == jobs_.end()) return true;
  Job& j = jit->second;
  if (c.status == CheckpointStatus::Present) {
    spdlog::info("job {}: checkpoint {} Present: {} bytes in {:.2f} s at {}", job_id,
                 c.checkpoint_id, c.size, c.duration, c.location);
    if (c.source == CheckpointSource::Vacate && j.state == JobState::Running) {
      double now = now_s();
      release(j, now);
      j.state = JobState::Pending;
      j.reason = "Vacated";
      j.end_time = 0;
      spdlog::info("job {}: vacated: pending until restarted", job_id);
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
    std::filesystem::remove_all(location + ".tmp", ec);
    if (ec) spdlog::warn("cannot remove {}.tmp: {}", location, ec.message());
  });
}

void Controller::confirm_launch(Job& j, const std::string& how) {
  j.awaiting_node = false;
  restore_retries_.erase(j.job_id);
  if (j.restore_from) {
    spdlog::info("job {}: restored from checkpoint {} on {} ({})", j.job_id, j.restore_from,
                 j.nodes, how);
    j.restore_from = 0;
  } else {
    spdlog::info("job {}: running on {} ({})", j.job_id, j.nodes, how);
  }
  save(j);
  end_if_requested(j);
  wake_.notify_all();
}

void Controller::end_if_requested(const Job& j) {
  // A cancel, requeue or time limit that came while the start was in flight signalled a
  // job the node did not know yet: it is signalled again now that it runs.
  if (j.end_request.empty()) return;
  spdlog::info("job {}: {} requested while it started: SIGTERM now, SIGKILL after {} s", j.job_id,
               j.end_request, cfg_.kill_wait);
  terminate(j, SIGTERM, true);
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

void Controller::retain(const Job& j) {
  auto& list = ckpts_[j.job_id];
  int present = 0;
  for (auto it = list.rbegin(); it != list.rend(); ++it) {
    if (it->status != CheckpointStatus::Present) continue;
    if (++present <= cfg_.max_epochs) continue;
    if (it->checkpoint_id == j.restore_from) continue;  // being restored from
    // Recorded first, removed by a worker outside mu_: an image may be many GB on slow
    // storage, and every request waits on mu_. A removal that fails is logged and tried
    // again at the next start (the sweep in start()).
    it->status = CheckpointStatus::Cleared;
    it->reason = fmt::format("retention: CRIU_MaxEpochs = {}", cfg_.max_epochs);
    save(*it);
    discard_image(it->location);
    spdlog::info("job {}: checkpoint {} Cleared ({})", j.job_id, it->checkpoint_id, it->reason);
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
  Lock l(mu_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return json::object();
  Job& j = it->second;
  // A report about a run that is already over (a repeated report, or one from a node
  // the job has since left) changes nothing.
  if (j.state != JobState::Running || j.nodes != node || launching_.count(id))
    return json::object();
  if (j.awaiting_node) {
    // It started (and ended) after all.
    j.awaiting_node = false;
    j.restore_from = 0;
  }
  double now = now_s();
  double started = j.start_time;
  release(j, now);
  j.exit_status = code;
  j.end_time = now;
  std::string req = j.end_request;
  j.end_request.clear();
  if (req == "requeue") {
    requeue_fresh(j);
  } else if (req == "cancel") {
    j.state = JobState::Cancelled;
  } else if (req == "timeout") {
    j.state = JobState::Timeout;
  } else if (lost) {
    // Restartable from its last checkpoint (scontrol checkpoint restart).
    j.state = JobState::NodeFail;
    j.reason = "NodeFail";
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

void Controller::schedule() {
  for (auto& [id, j] : jobs_) {
    if (j.state != JobState::Pending || j.hold || j.reason == "Vacated" || launching_.count(id))
      continue;
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
        if (!node_up(n) || n.cpus - n.alloc_cpus < j.num_cpus() ||
            n.real_memory - n.alloc_memory < j.mem_mb)
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
    j.next_checkpoint =
        j.checkpoint_interval ? j.start_time + static_cast<double>(j.checkpoint_interval) : 0;
    // Stored before the RPC: a controller restarted before the node's answer came
    // then knows to wait for the node's report rather than take the job as started.
    j.awaiting_node = true;
    save(j);
    launching_.insert(id);
    spdlog::info("job {}: {} on {}", id,
                 j.restore_from ? fmt::format("restoring from checkpoint {}", j.restore_from)
                                : std::string("starting"),
                 best->name);
    int64_t jid = id;
    spawn([this, jid] { launch(jid); });
  }
}

void Controller::launch(int64_t id) {
  proto::LaunchRequest req;
  std::string node, dir;
  int64_t from = 0;
  {
    Lock l(mu_);
    Job& j = jobs_.at(id);
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
           .script = script};
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
  launching_.erase(id);
  wake_.notify_all();  // a checkpoint request may be waiting for this answer
  Job& j = jobs_.at(id);
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
    save(j);
    if (from) {
      spdlog::info("job {}: restored from checkpoint {} on {} (restart {}, job version {})", id,
                   from, node, j.restarts, j.job_version);
      j.restore_from = 0;
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

void Controller::launch_failed(Job& j, const std::string& why,
                               std::optional<FailureClass> failure) {
  double now = now_s();
  j.awaiting_node = false;
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
      if (++rr.failures < kMaxTransientRestores) {
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
      j.restore_from = previous;
      j.state = JobState::Pending;
      j.reason = "None";
    } else {
      j.restore_from = 0;
      j.state = JobState::Failed;
      j.reason = "RestoreFailed";
      j.end_time = now;
    }
  } else if (++j.launch_failures >= 3) {
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
