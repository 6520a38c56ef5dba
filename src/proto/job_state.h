// A job's state (docs/scheduler.md "Job states"): its long name on the wire, in
// SQLite and in squeue -o %T / scontrol, and Slurm's short code for squeue's ST column.
// The one table of both, shared by the controller and the commands.
#pragma once

#include <array>
#include <optional>
#include <string_view>

#include "proto/named_enum.h"

namespace fsched::proto {

enum class JobState {
  Pending,     // queued: waiting for resources, held, or vacated
  Running,     // placed on a node (its start may await the node's confirmation)
  Completing,  // Slurm's name; fsched does not use it yet but accepts it in filters
  Completed,   // ended with exit status 0
  Failed,      // non-zero exit, or its launch/restore failed for good
  Cancelled,   // scancel
  Timeout,     // its time limit was reached
  NodeFail,    // its node lost it; restartable from a checkpoint
  Suspended,   // scontrol suspend: checkpointed and stopped, its CPUs and memory released,
               // until scontrol resume restores it
};

struct JobStateName {
  JobState value;
  std::string_view name, code;  // "PENDING", "PD"
};
inline constexpr std::array<JobStateName, 9> kJobStateNames{{
    {JobState::Pending, "PENDING", "PD"},
    {JobState::Running, "RUNNING", "R"},
    {JobState::Completing, "COMPLETING", "CG"},
    {JobState::Completed, "COMPLETED", "CD"},
    {JobState::Failed, "FAILED", "F"},
    {JobState::Cancelled, "CANCELLED", "CA"},
    {JobState::Timeout, "TIMEOUT", "TO"},
    {JobState::NodeFail, "NODE_FAIL", "NF"},
    {JobState::Suspended, "SUSPENDED", "S"},
}};

template <>
struct NamedEnumTraits<JobState> {
  static constexpr std::array<EnumName<JobState>, kJobStateNames.size()> names = [] {
    std::array<EnumName<JobState>, kJobStateNames.size()> a{};
    for (size_t i = 0; i < a.size(); ++i) a[i] = {kJobStateNames[i].value, kJobStateNames[i].name};
    return a;
  }();
  static constexpr std::string_view kind = "job state";
};

// Slurm's short code ("PD") of s.
constexpr std::string_view short_code(JobState s) {
  for (const auto& n : kJobStateNames)
    if (n.value == s) return n.code;
  return "?";
}

// The state named by its long name or its short code, exactly ("PENDING" or "PD").
constexpr std::optional<JobState> job_state_by_name_or_code(std::string_view text) {
  for (const auto& n : kJobStateNames)
    if (n.name == text || n.code == text) return n.value;
  return std::nullopt;
}

// Whether a job in state s still holds or waits for resources (squeue's default view).
constexpr bool is_active(JobState s) {
  return s == JobState::Pending || s == JobState::Running || s == JobState::Completing ||
         s == JobState::Suspended;
}

}  // namespace fsched::proto
