// What the controller knows of jobs, their checkpoints and the nodes. The JSON
// forms are the API's (docs/scheduler.md) and also how rows are kept in SQLite.
#pragma once

#include <cstdint>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "proto/checkpoint_kind.h"
#include "proto/checkpoint_source.h"
#include "proto/checkpoint_status.h"
#include "proto/job_state.h"

namespace fsched::ctld {

using proto::CheckpointKind;
using proto::CheckpointSource;
using proto::CheckpointStatus;
using proto::JobState;

struct Checkpoint {
  int64_t checkpoint_id = 0;
  int64_t job_id = 0;
  std::string description;
  double trigger_time = 0, completion_time = 0, duration = 0;  // Unix seconds, seconds
  CheckpointStatus status = CheckpointStatus::Creating;
  std::string reason;  // why Failed/Timeout/Skipped/Cleared
  CheckpointSource source = CheckpointSource::Manual;
  int64_t job_version = 1;
  std::string location;
  uint64_t size = 0;  // bytes of its own image
  double freeze_ms = 0;
  // Incremental checkpoints (CRIU_Incremental, docs/incremental.md): an incremental
  // image holds only the pages written since checkpoint parent_id (0 for a full one),
  // and restoring it needs every checkpoint of its chain. chain_size: bytes of its own
  // image and of every image below it.
  CheckpointKind kind = CheckpointKind::Full;
  int64_t parent_id = 0;
  uint64_t chain_size = 0;
  // The job's run (Job::generation) it was made in: only a checkpoint of the current
  // run can be a parent, since a restore starts the job's page tracking anew.
  int64_t generation = 0;
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(Checkpoint, checkpoint_id, job_id, description,
                                                trigger_time, completion_time, duration, status,
                                                reason, source, job_version, location, size,
                                                freeze_ms, kind, parent_id, chain_size, generation)

struct Job {
  int64_t job_id = 0;
  std::string name, user;
  uint32_t uid = 0, gid = 0;
  std::string partition;
  JobState state = JobState::Pending;
  std::string reason = "None";
  double submit_time = 0, start_time = 0, end_time = 0;
  int64_t run_time_done = 0;  // seconds run before the current start
  int64_t time_limit = 0;     // seconds, 0 = none
  std::string nodes;          // where it runs or last ran
  int cpus_per_task = 1, ntasks = 1;
  uint64_t mem_mb = 0;
  std::string work_dir, stdout_path, stderr_path;
  std::vector<std::string> argv;
  int64_t checkpoint_interval = 0;  // seconds
  bool requeue = true, hold = false;
  int restarts = 0;
  int64_t job_version = 1;
  int exit_status = 0;             // code as fsched-init reports it (128+sig if signalled)
  int64_t last_checkpoint_id = 0;  // the newest id handed out
  int64_t restore_from = 0;        // checkpoint to restore at the next start, 0 = start afresh
  double next_checkpoint = 0;      // Unix time the next periodic checkpoint is due
  std::string end_request;         // what the job's end means: cancel, requeue, timeout, ""
  int launch_failures = 0;
  // The launch or restore RPC ended without an answer (fschedd died or the connection
  // broke): the job may be running on `nodes`. It stays there, RUNNING, until the
  // node's report (op_done, or its job list at registration) settles it; it is never
  // started again meanwhile.
  bool awaiting_node = false;
  // Counts the job's launches and restores: the current run is (nodes, generation).
  // Sent to the node with each launch or restore; a report about another generation
  // is about a run the controller has given up on (docs/node-failure.md).
  int64_t generation = 0;
  // A restore chosen by the recovery after a node failure (not by `scontrol checkpoint
  // restart`): when every Present checkpoint fails, the job starts from scratch
  // instead of ending FAILED.
  bool recovery_restore = false;
  // What happened to the job, one "TIME: event" line each (requeues, node failures,
  // restores and their fallbacks), newest last; the last kHistoryMax are kept.
  std::vector<std::string> history;
  // SUSPENDED in place (scontrol suspend --in-place, Slurm's suspend): its run stays on
  // `nodes`, frozen, and keeps its CPUs and memory. suspend_time: since when (Unix time).
  bool suspended_in_place = false;
  double suspend_time = 0;
  // Suspended in place by the preemption of job `suspended_by` (PreemptMode=SUSPEND),
  // its CPUs lent to it (not counted on its node); 0: by scontrol suspend --in-place.
  int64_t suspended_by = 0;
  // Present checkpoints kept (seed 000's state.checkpoints.num-retained; sbatch
  // --num-retained, scontrol update NumRetained=, the console); 0: CRIU_MaxEpochs.
  int num_retained = 0;

  int num_cpus() const { return cpus_per_task * ntasks; }
  // Whether the job has a run on `nodes`: RUNNING, or SUSPENDED in place.
  bool on_node() const {
    return state == JobState::Running || (state == JobState::Suspended && suspended_in_place);
  }
  bool active() const { return proto::is_active(state); }
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(
    Job, job_id, name, user, uid, gid, partition, state, reason, submit_time, start_time, end_time,
    run_time_done, time_limit, nodes, cpus_per_task, ntasks, mem_mb, work_dir, stdout_path,
    stderr_path, argv, checkpoint_interval, requeue, hold, restarts, job_version, exit_status,
    last_checkpoint_id, restore_from, next_checkpoint, end_request, launch_failures, awaiting_node,
    generation, recovery_restore, history, suspended_in_place, suspend_time, suspended_by,
    num_retained)

// What of a Node is persisted (the Store's nodes table), its base: whether it is DOWN
// or DRAIN, why, by whom and since when (rows written before DRAIN existed load with
// drain false).
struct NodeAdmin {
  // Set DOWN (persisted with reason and down_time): by the controller after
  // SlurmdTimeout + requeue_timeout of silence (reason kNotResponding), or by an
  // administrator. No job is placed on a DOWN node.
  bool down = false;
  std::string reason;
  double down_time = 0;   // Unix time it was set DOWN
  std::string down_user;  // who set it DOWN (root, the controller, for its silence)
  // Set DRAIN by an administrator (persisted, apart from DOWN, which it outlives): no
  // job is placed here; its jobs with checkpointing are vacated and restored
  // elsewhere, the others run on until they end.
  bool drain = false;
  std::string drain_reason, drain_user;
  double drain_time = 0;  // Unix time
};
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(NodeAdmin, down, reason, down_time, down_user,
                                                drain, drain_reason, drain_user, drain_time)

struct Node : NodeAdmin {
  std::string name, addr;
  uint16_t port = 0;
  int cpus = 0;
  uint64_t real_memory = 0, free_memory = 0;  // MiB
  double load = 0;
  // Utilization ratios (0..1) over the last heartbeat interval, for CRIU_LoadAware:
  // busy CPU time, CPU time waiting for I/O, memory in use (1 - MemAvailable/MemTotal).
  double cpu_util = 0, io_wait = 0, mem_util = 0;
  double last_heartbeat = 0;  // Unix time; 0 = never registered
  // Silent for SlurmdTimeout (and not yet DOWN): its jobs stay RUNNING. Kept to log
  // the transitions; the node list computes it from last_heartbeat.
  bool not_responding = false;
  int alloc_cpus = 0;
  uint64_t alloc_memory = 0;
  // The node's last report (heartbeat or registration), for BatchStartTimeout: when it
  // came, the jobs with an operation record there, the runs (job -> generation) it has.
  double report_time = 0;
  // When a launch or restore sent here showed no sign of life within BatchStartTimeout
  // (a node cut off, but not silent for SlurmdTimeout yet): no job is placed here until
  // a report newer than that comes. 0: never.
  double unconfirmed_at = 0;
  std::set<int64_t> report_ops;
  std::map<int64_t, int64_t> report_runs;
};

// The reason of a node the controller set DOWN for its silence (Slurm's words). Only
// a node DOWN for this reason returns to service by itself (ReturnToService = 1).
inline constexpr std::string_view kNotResponding = "Not responding";
// Entries kept in Job::history.
inline constexpr size_t kHistoryMax = 20;

}  // namespace fsched::ctld
