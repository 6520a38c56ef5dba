// The API's JSON (docs/scheduler.md) as Slurm's commands print it. Pure functions of
// their arguments (apart from uid/gid -> name lookups and the local time zone), so
// that the layouts can be unit-tested.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

namespace fsched::cmds {

using nlohmann::json;

// ---- small pieces -------------------------------------------------------------

// squeue's short state code: PENDING -> "PD", RUNNING -> "R", COMPLETING -> "CG",
// COMPLETED -> "CD", FAILED -> "F", CANCELLED -> "CA", TIMEOUT -> "TO",
// NODE_FAIL -> "NF"; an unknown state is returned as it is.
std::string state_code(std::string_view state);

// A job state given by its long or short name in any case ("pd", "Running") ->
// its long name ("PENDING", "RUNNING"). Throws fsched::Error
// "Invalid job state specified: TEXT".
std::string parse_job_state(std::string_view text);

// scontrol's durations: "00:05:00", "1-02:03:04"; negative -> "UNLIMITED".
std::string scontrol_duration(int64_t seconds);

// Bytes in a short human form: "512B", "120.6K", "12.3M", "1.5G" (powers of 1024).
std::string human_size(double bytes);

// Host names as Slurm lists them: runs of names with the same prefix and numbers
// become ranges, "node1 node2 node3 gpu7" -> "node[1-3],gpu7" (groups keep the
// order in which they first appear; zero-padded numbers keep their width).
std::string compress_hostlist(std::span<const std::string> names);

// ---- squeue -------------------------------------------------------------------

inline constexpr std::string_view kSqueueDefaultFormat = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R";

// Which jobs squeue shows. Empty lists select everything; states empty means
// PENDING/RUNNING/COMPLETING unless job ids are given (then any state), as in Slurm.
struct JobFilter {
  std::vector<int64_t> job_ids;
  std::vector<uid_t> uids;
  std::vector<std::string> states;  // long names; "ALL" selects every state
  std::vector<std::string> partitions;
};

// Whether job passes filter.
bool job_selected(const json& job, const JobFilter& filter);

// One "%[.][width]X" item of a format, with the literal text that follows it.
struct FormatItem {
  char spec = 0;       // 0 for literal text before the first item
  int width = 0;       // 0: as wide as the value
  bool right = false;  // "%.Nx": right-justified
  std::string suffix;  // literal text printed after the field
};

// Parses an squeue -o format. Supported: %i/%A JOBID, %j NAME, %u USER, %U UID,
// %g GROUP, %G GID, %P PARTITION, %t ST, %T STATE, %M TIME, %l TIME_LIMIT,
// %L TIME_LEFT, %D NODES, %R NODELIST(REASON), %N NODELIST, %r REASON, %C CPUS,
// %c MIN_CPUS, %m MIN_MEMORY, %V SUBMIT_TIME, %S START_TIME, %e END_TIME,
// %Z WORK_DIR, %o COMMAND, %% a percent sign. Throws fsched::Error
// "Invalid job format specification: ..." on another letter.
std::vector<FormatItem> parse_squeue_format(std::string_view format);

// The table: a header line (unless !header) and one line per job, each truncated or
// padded to its field's width, without trailing blanks.
std::string squeue_table(std::span<const json> jobs, std::string_view format, bool header = true);

// ---- scontrol -----------------------------------------------------------------

// `scontrol show job`: Slurm's multi-line Key=Value layout plus fsched's Checkpoint,
// LastCheckpoint, Restarts/JobVersion fields; ends with a blank line.
std::string show_job(const json& job);

// `scontrol show node` / `show partition`: Slurm's layouts; each ends with a blank line.
// A node that is "not_responding" shows as State=IDLE+NOT_RESPONDING (DOWN+..., ...);
// a reason as Reason=TEXT [USER@TIMESTAMP] (node_reason_user, node_reason_time).
std::string show_node(const json& node);

// Who set a node's reason: "reason_user" (a name) or "reason_uid" (a number) of the
// node's JSON; "root" when neither is there (the controller sets "Not responding").
std::string node_reason_user(const json& node);

// When a node's reason was set: "reason_time", else "down_time" (Unix seconds); 0 if
// neither is there.
double node_reason_time(const json& node);

// `scontrol update NodeName=LIST State=DOWN|RESUME [Reason=TEXT]` (keys in any case,
// NodeName a host list such as node[1-2]) -> one POST /v1/nodes/NAME/update body per
// node: {"state": "DOWN"|"RESUME", "reason": TEXT}. Throws fsched::Error with Slurm's
// message: "You must specify a reason when DOWNING or DRAINING a node. Request denied"
// for DOWN without a reason, "Invalid node state specified: X" for another state, and
// usage errors for a missing NodeName or State or an unknown key.
std::vector<std::pair<std::string, json>> node_update_requests(
    std::span<const std::string> settings);
std::string show_partition(const json& partition);

// `scontrol checkpoint list`: a table with the columns ID DESCRIPTION TRIGGER_TIME
// COMPLETION_TIME DURATION STATUS SOURCE VERSION LOCATION SIZE REASON (why a
// checkpoint is Failed, Timeout, Skipped or Cleared; "-" when there is none).
std::string checkpoint_table(std::span<const json> checkpoints);

// One checkpoint in a line: "Checkpoint 3 of job 12 is Present: /path (12.3M in 0.84s)";
// a Failed/Timeout one gives its reason instead of the location.
std::string checkpoint_summary(const json& checkpoint);

// What `scontrol checkpoint restart` says, given the job the controller answered
// (its restore_from: the checkpoint it will restore) and the job's checkpoints:
// "Job 12 restarting from checkpoint 3", with ", or from checkpoint 2 should its
// restore fail" when an older Present checkpoint is there to fall back to (the
// controller does so by itself), or "Job 12 restarting" when restore_from is absent.
std::string restart_message(int64_t job_id, const json& job, std::span<const json> checkpoints);

// ---- sinfo --------------------------------------------------------------------

// sinfo's default table: "PARTITION AVAIL  TIMELIMIT  NODES  STATE NODELIST", one row
// per (partition, node state), the default partition marked with '*'.
std::string sinfo_table(std::span<const json> partitions, std::span<const json> nodes);

// sinfo -N: "NODELIST   NODES PARTITION STATE", one row per node and partition it
// belongs to (among those given).
std::string sinfo_node_table(std::span<const json> partitions, std::span<const json> nodes);

// sinfo -R: "REASON USER TIMESTAMP NODELIST" (Slurm's "%50E %9u %19H %N"), one row
// per (reason, user, time) of the nodes that are DOWN or have a reason.
std::string sinfo_reasons_table(std::span<const json> nodes);

// sinfo's state names: IDLE -> "idle", MIXED -> "mix", ALLOCATED -> "alloc",
// DOWN -> "down", UNKNOWN -> "unk"; others lowercased.
std::string sinfo_state(std::string_view node_state);

// A node's state in sinfo: sinfo_state of its "state", with Slurm's '*' when it is
// "not_responding" ("idle*", "alloc*", "down*").
std::string sinfo_node_state(const json& node);

}  // namespace fsched::cmds
