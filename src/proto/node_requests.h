// The bodies of the controller's requests to fschedd (docs/scheduler.md "Node routes"):
// one struct per request, written by fschedctld and read by fschedd through the
// to_json/from_json below, so that each key is spelled once.
//
// from_json reads what the JSON has, by type: a missing required field or a mistyped
// one throws nlohmann::json::exception (the RPC server answers 400 "bad request: ..."),
// a number outside its C++ type throws proto::RpcError 400 naming the field (get<T>()
// would wrap or be undefined). What a field may hold beyond its type (a signal number's
// range, which fields a restore needs) is fschedd's to check (src/noded/node.cpp).
#pragma once

#include <sys/types.h>

#include <csignal>
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace fsched::proto {

// POST /v1/node/launch, and POST /v1/node/restore with restore_dir set.
// Required: job_id, script, uid, gid; for a launch (restore_dir absent or empty) also stdout,
// stderr, work_dir, user. Optional: name, argv, env (entries whose value is not a
// string are dropped), restore_dir.
struct LaunchRequest {
  int64_t job_id = 0;
  std::string name, user;  // user: the job's user, by name
  uid_t uid = 0;
  gid_t gid = 0;
  std::string work_dir, stdout_path, stderr_path;  // keys "work_dir", "stdout", "stderr"
  std::vector<std::string> argv;                   // the script's arguments
  std::string script;                              // the batch script's text
  std::map<std::string, std::string> env;          // the job's environment
  std::string restore_dir;                         // restore only: the image to restore
  // The run's generation: the controller counts every launch and restore of a job, and
  // a node refuses or kills a run whose generation is older than one it was told of
  // (fencing, docs/node-failure.md). 0 only from a controller that predates fencing.
  int64_t generation = 0;
  // When the controller issued the request (Unix time, seconds). A node refuses a
  // request older than AuthInfo's cred_expire, so a delayed request cannot start a
  // run the controller has given up on. 0 = not stated.
  double issued = 0;
};
void to_json(nlohmann::json& j, const LaunchRequest& r);
void from_json(const nlohmann::json& j, LaunchRequest& r);

// POST /v1/node/checkpoint. Required: job_id, dir. Optional: leave_running (true),
// timeout (0 when absent: the node's CRIU_Timeout), parent (""), track_mem (false),
// pre_dump_delay (-1), track_method ("").
struct CheckpointRequest {
  int64_t job_id = 0;
  std::string dir;            // where the image goes (DIR.tmp until complete)
  bool leave_running = true;  // false for a vacate: the job stops once dumped
  int timeout = 0;            // seconds
  // An earlier image of the job (its directory): the dump stores only the pages written
  // since it (`fsched-ckpt dump --parent`), or a full image when the job's tracking does
  // not go back to it. "" for a full image. Must be in the same directory as `dir`.
  std::string parent;
  // Track the job's written pages from this dump on, for the next incremental
  // (`--track-mem`). Only with leave_running.
  bool track_mem = false;
  // CRIU_PreDump: first `fsched-ckpt pre-dump` into DIR.pre while the job runs, wait
  // this many seconds, then dump only what changed since (DIR.pre is its parent). -1:
  // no pre-dump. Not with `parent`.
  int pre_dump_delay = -1;
  // CRIU_TrackMethod for the dump and the pre-dump (`--track-method`): "kernel",
  // "hash", or "" for the engine's default.
  std::string track_method;
};
void to_json(nlohmann::json& j, const CheckpointRequest& r);
void from_json(const nlohmann::json& j, CheckpointRequest& r);

// POST /v1/node/signal. Required: job_id. Optional: signal (SIGTERM), kill_wait (-1).
struct SignalRequest {
  int64_t job_id = 0;
  int signal = SIGTERM;
  int kill_wait = -1;  // seconds before SIGKILL; -1: no SIGKILL
};
void to_json(nlohmann::json& j, const SignalRequest& r);
void from_json(const nlohmann::json& j, SignalRequest& r);

// POST /v1/node/suspend. Required: job_id, generation. Optional: stop (true).
// scontrol suspend --in-place (Slurm's suspend): the run's cgroup is frozen (stop) or
// thawed; its processes stay in memory on the node.
struct SuspendRequest {
  int64_t job_id = 0;
  int64_t generation = 0;  // the run meant; another run of the job is refused (409)
  bool stop = true;        // true: freeze, false: thaw
};
void to_json(nlohmann::json& j, const SuspendRequest& r);
void from_json(const nlohmann::json& j, SuspendRequest& r);

// One run of a job on a node: the job and the generation of that run.
struct RunRef {
  int64_t job_id = 0;
  int64_t generation = 0;
};
void to_json(nlohmann::json& j, const RunRef& r);
void from_json(const nlohmann::json& j, RunRef& r);

// The controller's answer to a node's heartbeat (POST /v1/nodes/heartbeat and
// /v1/nodes/register). The node's jobs are listed in the heartbeat's "jobs" array, one
// object per run with at least "job_id" and "generation".
struct HeartbeatReply {
  // Seconds, counted by the node from the moment it SENT the heartbeat, during which
  // the node may keep its jobs running without another successful heartbeat (its
  // lease). When the lease runs out the node freezes its jobs; the controller
  // restores them elsewhere only after that moment has surely passed.
  int lease = 0;
  // Runs the node reported that are no longer the job's current run (the job was
  // restored or requeued elsewhere, ended, or has a newer generation): the node kills
  // them without letting them run again, and discards their state.
  std::vector<RunRef> stale;
};
void to_json(nlohmann::json& j, const HeartbeatReply& r);
void from_json(const nlohmann::json& j, HeartbeatReply& r);

}  // namespace fsched::proto
