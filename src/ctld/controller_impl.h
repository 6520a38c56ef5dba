// Internal to the controller's source files (controller.cpp, job_mgr.cpp,
// ckpt_mgr.cpp, node_mgr.cpp, sched.cpp): the helpers and limits they share.
#pragma once

#include <pwd.h>
#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

#include "common/failure.h"
#include "ctld/state.h"
#include "proto/json_number.h"
#include "proto/rpc.h"

namespace fsched::ctld {

using proto::RpcError;

inline double now_s() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// The login name of uid, or its number when it has none. getpwuid_r: request threads
// call it at once, and getpwuid's one static buffer would give one the other's name.
inline std::string user_name(uid_t uid) {
  passwd pw{};
  passwd* found = nullptr;
  std::string buf(16384, '\0');
  if (::getpwuid_r(uid, &pw, buf.data(), buf.size(), &found) == 0 && found) return pw.pw_name;
  return std::to_string(uid);
}

// %j and %x in output paths, as sbatch's filename patterns.
inline std::string expand_pattern(std::string_view pat, const Job& j) {
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
inline constexpr int64_t kMaxCpus = int64_t{1} << 20;
inline constexpr int64_t kMaxMemMb = int64_t{1} << 40;    // as RealMemory
inline constexpr int64_t kMaxSeconds = int64_t{1} << 40;  // time limits and intervals
// The most checkpoints a job may ask to keep (Job::num_retained), as CRIU_MaxEpochs.
inline constexpr int64_t kMaxRetained = 1000000;
inline constexpr int64_t kMaxId = std::numeric_limits<int64_t>::max();

// The reason of a checkpoint marked Failed because a restore from it failed. Its
// image is kept (see launch_failed); Failed dumps and Timeouts are removed.
inline constexpr std::string_view kRestoreFailedPrefix = "restore failed: ";
inline bool kept_after_failed_restore(const Checkpoint& c) {
  return c.reason.starts_with(kRestoreFailedPrefix);
}

// Failed "node drain" dumps of a job (each kDrainRetryDelayS * n seconds after the
// n-th) before the drain leaves it running: as for restores, a passing cause passes.
inline constexpr int kMaxDrainAttempts = 3;
inline constexpr double kDrainRetryDelayS = 10;

// Transient failures of the restore from one checkpoint after which it counts as
// Failed: never a loop, and three tries (on other nodes when there are) are enough to
// tell a passing cause from a lasting one that the engine could not classify.
inline constexpr int kMaxTransientRestores = 3;
// Seconds before the n-th retry: n times this, time for a passing cause to pass.
inline constexpr double kRestoreRetryDelayS = 5;

// A failure's reason with its class in front (docs/failures.md), so that `scontrol
// checkpoint list` says whose fault it was; an unclassified one as it came.
inline std::string classified(std::optional<FailureClass> c, const std::string& why) {
  return c ? fmt::format("{} failure: {}", to_string(*c), why) : why;
}

// The "failure" field of a node's report: none if absent or unknown to this build.
inline std::optional<FailureClass> failure_field(const nlohmann::json& b) {
  if (!b.is_object() || !b.contains("failure") || !b["failure"].is_string()) return std::nullopt;
  return failure_class_from_string(b["failure"].get<std::string>());
}

}  // namespace fsched::ctld
