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
};
void to_json(nlohmann::json& j, const LaunchRequest& r);
void from_json(const nlohmann::json& j, LaunchRequest& r);

// POST /v1/node/checkpoint. Required: job_id, dir. Optional: leave_running (true),
// timeout (0 when absent: the node's CRIU_Timeout).
struct CheckpointRequest {
  int64_t job_id = 0;
  std::string dir;            // where the image goes (DIR.tmp until complete)
  bool leave_running = true;  // false for a vacate: the job stops once dumped
  int timeout = 0;            // seconds
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

}  // namespace fsched::proto
