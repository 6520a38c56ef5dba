// Durable records of the engine operations fschedd runs for a job (launch, restore,
// checkpoint, vacate), so that an fschedd killed in the middle of one finds it again
// after its restart, waits for it and reports its true outcome (issue 10, items 8
// and 9).
//
// Every operation is recorded in <SlurmdSpoolDir>/ops-<node>/job<ID>.op.json (0600, in a
// 0700 directory, written as tmp + fsync + rename) BEFORE it starts. The engine is
// not run by fschedd itself but by an "op runner" (fschedd --op-runner, a child in
// its own session): it survives fschedd, waits for the engine, and writes the
// engine's exit status and output to job<ID>.result.json. The runner holds an
// flock on job<ID>.lock for its whole life: a restarted fschedd knows the operation
// is over when it can take that lock, whatever happened to the runner.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fd.h"

namespace fsched::noded {

enum class OpKind { Launch, Restore, Checkpoint, Vacate };
NLOHMANN_JSON_SERIALIZE_ENUM(OpKind, {{OpKind::Launch, "launch"},
                                      {OpKind::Restore, "restore"},
                                      {OpKind::Checkpoint, "checkpoint"},
                                      {OpKind::Vacate, "vacate"}})

enum class OpPhase { Running, Done };
NLOHMANN_JSON_SERIALIZE_ENUM(OpPhase, {{OpPhase::Running, "running"}, {OpPhase::Done, "done"}})

enum class OpOutcome { None, Ok, Failed, Timeout };
NLOHMANN_JSON_SERIALIZE_ENUM(OpOutcome, {{OpOutcome::None, "none"},
                                         {OpOutcome::Ok, "ok"},
                                         {OpOutcome::Failed, "failed"},
                                         {OpOutcome::Timeout, "timeout"}})

const char* to_string(OpKind k);

struct OpRecord {
  int64_t job_id = 0;
  OpKind kind = OpKind::Launch;
  OpPhase phase = OpPhase::Running;
  std::string node;
  std::string image_dir;  // checkpoint/vacate: the image written; restore: the image read
  int timeout_s = 0;
  double started = 0;  // Unix seconds
  // Filled when phase == Done, and reported to the controller until it acknowledges.
  OpOutcome outcome = OpOutcome::None;
  std::string error;  // one line, for Failed/Timeout
  // For Failed/Timeout: the failure's class by name (common/failure.h), from the
  // engine's exit code, so that the controller knows whether the image is to blame.
  std::string failure;
  uint64_t size = 0;  // image bytes (checkpoint/vacate)
  double freeze_ms = 0, dump_ms = 0;
  // checkpoint/vacate: "full" or "incremental" as the engine reported it; "" when its
  // report was lost (the image was found complete afterwards).
  std::string image_kind;
  // checkpoint/vacate with CRIU_PreDump: bytes of the pre-dump image (DIR.pre) the dump
  // was made on; 0 when there was none (or the dump did not use it).
  uint64_t pre_dump_bytes = 0;
  pid_t pid = 0;           // launch/restore: the job's init
  int64_t generation = 0;  // launch/restore: the run's generation (its cgroup's name)

  bool is_dump() const { return kind == OpKind::Checkpoint || kind == OpKind::Vacate; }
  // The body of POST /v1/nodes/op_done and of an entry of the heartbeat's "ops".
  nlohmann::json report() const;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(OpRecord, job_id, kind, phase, node, image_dir,
                                                timeout_s, started, outcome, error, failure, size,
                                                freeze_ms, dump_ms, image_kind, pre_dump_bytes, pid,
                                                generation)

// What the op runner writes when the engine has ended.
struct RunnerResult {
  int status = 0;          // wait status
  int exit_code = 0;       // exit code, or 128 + signal
  bool timed_out = false;  // killed after timeout_s
  std::string out, err;
  std::string error_line;  // last line of err, for messages
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(RunnerResult, status, exit_code, timed_out, out,
                                                err, error_line)

// The HTTP status with which fschedd answers an engine operation that failed with
// class c (docs/failures.md): image 422, unsupported 501, transient 503, usage 500 (a
// command line fschedd built wrong is fschedd's own fault). A timeout is 504 and a
// conflicting request 409, whatever the class.
int http_status_of(FailureClass c);

// The class of a failed operation from what its runner reported: the engine's exit
// code; none (the runner left no result) or a timeout is transient.
FailureClass failure_of(const std::optional<RunnerResult>& res);

// Writes text to path atomically and durably: path.tmp, fsync, rename, fsync of the
// directory. Throws fsched::Error with errno and the path.
void write_durably(const std::filesystem::path& path, std::string_view text, mode_t mode);

class OpLog {
 public:
  // dir: <SlurmdSpoolDir>/ops-<node>, created 0700 (it names images and holds engine
  // output). Throws fsched::Error.
  explicit OpLog(std::filesystem::path dir);

  const std::filesystem::path& dir() const { return dir_; }
  std::filesystem::path record_path(int64_t job_id) const;
  std::filesystem::path result_path(int64_t job_id) const;
  std::filesystem::path lock_path(int64_t job_id) const;

  void put(const OpRecord& r) const;   // durable before it returns
  std::vector<OpRecord> load() const;  // unreadable records are logged and skipped
  void remove(int64_t job_id) const;   // record, result and lock
  std::optional<RunnerResult> result(int64_t job_id) const;

  // Takes the job's lock without waiting, for a runner about to start: an empty
  // UniqueFd if a runner of an earlier operation still holds it.
  UniqueFd try_lock(int64_t job_id) const;

  // Starts the op runner (self_exe --op-runner ...) in a session of its own holding
  // lock (passed as its fd 3): it runs argv with env, killing it after timeout_s
  // (<= 0: no limit), and writes the result file. cgroup: when not empty, the cgroup
  // directory in which the runner starts argv (the runner itself stays out of it, so
  // that a frozen or killed job does not stop it from reporting). Returns the runner's
  // pid (a child of this process). Throws fsched::Error if it cannot be started.
  pid_t start_runner(int64_t job_id, const UniqueFd& lock, const std::vector<std::string>& argv,
                     const std::map<std::string, std::string>& env, int timeout_s,
                     const std::filesystem::path& cgroup = {}) const;

 private:
  std::filesystem::path dir_;
};

// Entry point of `fschedd --op-runner RESULT_FILE TIMEOUT_S CGROUP|- -- PROGRAM ARGS...`
// (argv as main() got it). Returns the process exit status.
int op_runner_main(int argc, char** argv);

}  // namespace fsched::noded
