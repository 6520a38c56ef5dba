// fschedd's core: runs the jobs the controller places on this node through the
// engine CLI (fsched-ckpt run/dump/restore), watches them end, and reports to the
// controller. A job is not a child of fschedd: its init is detached, and what
// fschedd knows of it lives in <SlurmdSpoolDir>/job<ID>/ so that a restarted
// fschedd finds its jobs again (and the exit status of those that ended meanwhile,
// which fsched-init writes to the job's status file).
#pragma once

#include <sys/types.h>

#include <deque>
#include <filesystem>
#include <memory>
#include <map>
#include <optional>
#include <vector>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include <nlohmann/json.hpp>

#include "noded/cgroup.h"
#include "noded/lease.h"
#include "noded/oplog.h"
#include "proto/config.h"
#include "proto/node_requests.h"
#include "proto/rpc.h"

namespace fsched::noded {

struct LocalJob {
  int64_t job_id = 0;
  pid_t pid = 0;  // host PID of the job's init
  unsigned long long start_ticks =
      0;  // its start time (/proc/PID/stat field 22), against PID reuse
  std::string node;
  bool vacating = false;  // being dumped in kill mode, or dumped and the controller not yet
                          // told: its end is not a job end (the op record says so after a restart)
  bool ended = false;     // ended, report not yet acknowledged
  int exit_status = 0;
  bool lost = false;       // found dead with no exit status when fschedd started:
                           // the node went down (or the init was killed) meanwhile
  int64_t generation = 0;  // the run's generation (LaunchRequest.generation)
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(LocalJob, job_id, pid, start_ticks, node, ended,
                                                exit_status, lost, generation)

// The bodies of fschedd's routes (proto/node_requests.h), decoded and checked, so that
// they can be checked without a server. Throw nlohmann::json::exception (sent as 400)
// on a missing or mistyped field, proto::RpcError 400 on a value out of range or a
// field the route does not take.
using proto::CheckpointRequest;
using proto::LaunchRequest;
using proto::SignalRequest;

// POST /v1/node/launch (restore false: env gets a PATH if it has none) and
// /v1/node/restore (restore true: restore_dir required, env only a PATH).
LaunchRequest decode_launch(const nlohmann::json& body, bool restore);
// POST /v1/node/checkpoint; an absent timeout becomes default_timeout.
CheckpointRequest decode_checkpoint(const nlohmann::json& body, int default_timeout);
// POST /v1/node/signal.
SignalRequest decode_signal(const nlohmann::json& body);

class NodeDaemon {
 public:
  // name: this node's NodeName in the config. Throws fsched::Error when the node
  // is not configured, the spool directory cannot be created, or the node's jobs
  // cgroup cannot be made (cgroup.h: make_jobs_cgroup).
  NodeDaemon(proto::Config cfg, std::string name);
  ~NodeDaemon();

  void add_routes(proto::Server& s);
  // Forks the lease guard (lease.h). Call it from the main thread, after daemonizing
  // and before start(): the guard dies with the thread that forked it.
  void start_guard();
  // Adopts the jobs found in the spool directory, then starts the heartbeat and
  // the watcher threads.
  void start();
  void stop();
  const proto::NodeConf& conf() const { return *me_; }
  const Cgroup& jobs_cgroup() const { return jobs_cg_; }
  const Lease& lease() const { return *lease_; }

  // What a successful heartbeat (or registration) sent at `sent` does with the
  // controller's reply: kills the runs it lists as stale (cgroup.kill; they are
  // forgotten, not reported as ended), then renews the lease (reply.lease seconds,
  // SlurmdTimeout when 0), then thaws the jobs if the guard froze them. Returns the
  // number of runs killed.
  int on_heartbeat_reply(const proto::HeartbeatReply& reply, Lease::Clock::time_point sent);
  // The runs this node has (running, or ended and not yet reported).
  std::vector<proto::RunRef> runs() const;
  // Throws RpcError 409 when q may not start here because of fencing: its generation
  // is not newer than a run of the job that the node has or was told is stale, or it
  // was issued more than AuthInfo cred_expire seconds ago; 503 (transient) while the
  // node's lease has expired. mu_ must not be held.
  void check_fencing(const LaunchRequest& q) const;

 private:
  using json = nlohmann::json;
  json launch(const proto::Request& r, bool restore);
  json checkpoint(const proto::Request& r);
  json signal(const proto::Request& r);
  // POST /v1/node/suspend (SuspendRequest): freezes or thaws the run's cgroup and waits
  // (10 s at most) until cgroup.events says it is so. 409 if the node has no such run
  // or a dump, launch or restore of it is under way; 500 if the cgroup does not settle.
  // Defined in suspend.cpp.
  json suspend(const proto::Request& r);
  json list(const proto::Request& r);
  std::filesystem::path job_dir(int64_t id) const;
  void prepare_job_dir(const LaunchRequest& req);
  void adopt(const std::filesystem::path& spool);
  void persist(const LocalJob& j) const;
  // Runs rec's engine command through the op runner, rec recorded durably first;
  // returns rec completed (phase Done). The caller has reserved ops_[rec.job_id].
  // cgroup: where the engine starts (launch, restore), empty for a dump.
  OpRecord run_op(OpRecord rec, const std::vector<std::string>& argv,
                  const std::map<std::string, std::string>& env,
                  const std::filesystem::path& cgroup = {});
  // Decides an ended operation's outcome from the runner's result (none if the runner
  // left none) and, where that is missing or failed, from the image or the pid file
  // themselves; applies it to jobs_ and records it as Done.
  void finish_op(OpRecord& rec, const std::optional<RunnerResult>& res);
  void recover_op(OpRecord rec);  // thread: waits for a runner left by an earlier fschedd
  void report_ops();
  // Drops a Done, unreported operation of job id before a new request for it (mu_ held).
  void supersede_done_op(int64_t id);  // Done operations to the controller (POST /v1/nodes/op_done)
  // Whether dir is a complete image that passes `fsched-ckpt verify`; why if not.
  bool verify_image(const std::string& dir, std::string& why) const;
  void watch();      // thread: notices ended jobs and reports them
  void heartbeat();  // thread
  json status() const;
  void check_fencing_locked(const LaunchRequest& q) const;
  // Ends the cgroup of job id's run, if it has one (mu_ held): cgroup.kill now, the
  // directory removed by the watcher once empty.
  void end_run_cgroup(int64_t id);
  // After a dump of job id that failed or was killed: thaws its run's cgroup if the dump
  // left it frozen (without mu_; waits up to 2 s for the network lock's guardian).
  void thaw_after_failed_dump(int64_t id);
  void remove_ended_cgroups();                          // the watcher's part of end_run_cgroup
  void remember_stale(int64_t id, int64_t generation);  // mu_ held
  void log_lease();  // heartbeat thread: logs when the guard froze the jobs
  std::string ckpt_tool() const;
  proto::Client controller(int timeout_s) const;

  proto::Config cfg_;
  const proto::NodeConf* me_;
  std::string name_;
  mutable std::mutex mu_;
  std::map<int64_t, LocalJob> jobs_;
  OpLog oplog_;
  std::map<int64_t, OpRecord> ops_;  // at most one operation per job, running or not yet reported
  // Fencing (docs/fencing-node.md).
  Cgroup jobs_cg_;                // the node's jobs cgroup: the guard freezes it
  std::unique_ptr<Lease> lease_;  // shared with the guard process
  struct RunCgroup {
    int64_t generation = 0;
    Cgroup cg;
  };
  std::map<int64_t, RunCgroup> run_cg_;  // by job: the cgroup of its run (or launch under way)
  std::vector<Cgroup> ending_;           // killed, to be removed once empty
  // Generations the controller said are stale, per job (newest only), bounded: the
  // oldest entries go first. A launch of one of them, delayed in the network, is refused.
  std::map<int64_t, int64_t> stale_gen_;
  std::deque<int64_t> stale_order_;
  bool frozen_logged_ = false;  // heartbeat thread only
  int guard_err_logged_ = 0;    // heartbeat thread only
  bool stopping_ = false;
  std::thread watcher_, beater_;
  std::vector<std::thread> recoverers_;
};

}  // namespace fsched::noded
