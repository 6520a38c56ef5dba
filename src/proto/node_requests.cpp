#include "proto/node_requests.h"

#include <filesystem>

#include <fmt/format.h>

#include "proto/json_number.h"
#include "proto/rpc.h"

namespace fsched::proto {
namespace {

using nlohmann::json;

// j[key] as the number T: json::exception if absent or not a number, RpcError 400 if
// out of T's range.
template <typename T>
T number_at(const json& j, const char* key) {
  const json& v = j.at(key);
  if (!json_number_fits<T>(v))
    throw RpcError(400, fmt::format("field '{}' is out of range: {}", key, v.dump()));
  return v.get<T>();
}

// Like number_at(), dflt when absent.
template <typename T>
T number_or(const json& j, const char* key, T dflt) {
  return j.contains(key) ? number_at<T>(j, key) : dflt;
}

template <typename T>
T value_or(const json& j, const char* key, T dflt) {
  return j.contains(key) ? j.at(key).get<T>() : dflt;
}

void expect_object(const json& j, const char* what) {
  if (!j.is_object())
    throw json::type_error::create(
        302, fmt::format("{} request: expected an object, not {}", what, j.type_name()), &j);
}

}  // namespace

void to_json(json& j, const LaunchRequest& r) {
  j = {{"job_id", r.job_id},
       {"name", r.name},
       {"user", r.user},
       {"uid", r.uid},
       {"gid", r.gid},
       {"work_dir", r.work_dir},
       {"stdout", r.stdout_path},
       {"stderr", r.stderr_path},
       {"argv", r.argv},
       {"script", r.script},
       {"env", r.env}};
  if (!r.restore_dir.empty()) j["restore_dir"] = r.restore_dir;
  j["generation"] = r.generation;
  j["issued"] = r.issued;
}

void from_json(const json& j, LaunchRequest& r) {
  expect_object(j, "launch");
  r.job_id = number_at<int64_t>(j, "job_id");
  r.script = j.at("script").get<std::string>();
  r.uid = number_at<uid_t>(j, "uid");
  r.gid = number_at<gid_t>(j, "gid");
  r.restore_dir = value_or<std::string>(j, "restore_dir", "");
  r.generation = number_or<int64_t>(j, "generation", 0);
  r.issued = number_or<double>(j, "issued", 0.0);
  // A restore runs what the image holds: the launch's paths and user are not needed.
  bool restore = !r.restore_dir.empty();
  r.stdout_path =
      restore ? value_or<std::string>(j, "stdout", "") : j.at("stdout").get<std::string>();
  r.stderr_path =
      restore ? value_or<std::string>(j, "stderr", "") : j.at("stderr").get<std::string>();
  r.work_dir =
      restore ? value_or<std::string>(j, "work_dir", "") : j.at("work_dir").get<std::string>();
  r.user = restore ? value_or<std::string>(j, "user", "") : j.at("user").get<std::string>();
  r.name = value_or<std::string>(j, "name", "");
  r.argv = value_or<std::vector<std::string>>(j, "argv", {});
  r.env.clear();
  if (auto it = j.find("env"); it != j.end() && it->is_object())
    for (auto& [k, v] : it->items())
      if (v.is_string()) r.env[k] = v.get<std::string>();
}

void to_json(json& j, const CheckpointRequest& r) {
  j = {{"job_id", r.job_id}, {"dir", r.dir}, {"leave_running", r.leave_running}};
  if (r.timeout) j["timeout"] = r.timeout;
  if (!r.parent.empty()) j["parent"] = r.parent;
  if (r.track_mem) j["track_mem"] = true;
  if (r.pre_dump_delay >= 0) j["pre_dump_delay"] = r.pre_dump_delay;
  if (!r.track_method.empty()) j["track_method"] = r.track_method;
}

void from_json(const json& j, CheckpointRequest& r) {
  expect_object(j, "checkpoint");
  r.job_id = number_at<int64_t>(j, "job_id");
  r.dir = j.at("dir").get<std::string>();
  r.leave_running = value_or<bool>(j, "leave_running", true);
  r.timeout = number_or<int>(j, "timeout", 0);
  r.parent = value_or<std::string>(j, "parent", "");
  r.track_mem = value_or<bool>(j, "track_mem", false);
  if (r.track_mem && !r.leave_running)
    throw RpcError(400, "checkpoint: track_mem needs leave_running");
  r.pre_dump_delay = number_or<int>(j, "pre_dump_delay", -1);
  if (r.pre_dump_delay < -1 || r.pre_dump_delay > 86400)
    throw RpcError(400,
                   fmt::format("checkpoint: pre_dump_delay {} is out of range", r.pre_dump_delay));
  if (r.pre_dump_delay >= 0 && !r.parent.empty())
    throw RpcError(400, "checkpoint: a pre-dump and a parent image are exclusive");
  r.track_method = value_or<std::string>(j, "track_method", "");
  if (!r.track_method.empty() && r.track_method != "kernel" && r.track_method != "hash")
    throw RpcError(400, fmt::format("checkpoint: track_method \"{}\" is neither kernel nor hash",
                                    r.track_method));
  // The image names its parent by a name relative to its own directory
  // (docs/incremental.md): an earlier checkpoint of the same job, beside it.
  if (!r.parent.empty() &&
      std::filesystem::path(r.parent).parent_path() != std::filesystem::path(r.dir).parent_path())
    throw RpcError(400,
                   fmt::format("checkpoint: parent image {} is not beside {}", r.parent, r.dir));
}

void to_json(json& j, const SignalRequest& r) {
  j = {{"job_id", r.job_id}, {"signal", r.signal}, {"kill_wait", r.kill_wait}};
}

void from_json(const json& j, SignalRequest& r) {
  expect_object(j, "signal");
  r.job_id = number_at<int64_t>(j, "job_id");
  r.signal = number_or<int>(j, "signal", SIGTERM);
  r.kill_wait = number_or<int>(j, "kill_wait", -1);
}

void to_json(json& j, const SuspendRequest& r) {
  j = {{"job_id", r.job_id}, {"generation", r.generation}, {"stop", r.stop}};
}

void from_json(const json& j, SuspendRequest& r) {
  expect_object(j, "suspend");
  r.job_id = number_at<int64_t>(j, "job_id");
  r.generation = number_at<int64_t>(j, "generation");
  r.stop = value_or<bool>(j, "stop", true);
}

void to_json(json& j, const RunRef& r) { j = {{"job_id", r.job_id}, {"generation", r.generation}}; }

void from_json(const json& j, RunRef& r) {
  expect_object(j, "run");
  r.job_id = number_at<int64_t>(j, "job_id");
  r.generation = number_or<int64_t>(j, "generation", 0);
}

void to_json(json& j, const HeartbeatReply& r) { j = {{"lease", r.lease}, {"stale", r.stale}}; }

void from_json(const json& j, HeartbeatReply& r) {
  expect_object(j, "heartbeat reply");
  r.lease = number_or<int>(j, "lease", 0);
  r.stale = value_or<std::vector<RunRef>>(j, "stale", {});
}

}  // namespace fsched::proto
