// PreemptMode (fsched.conf, docs/scheduler.md "Preemption"): what becomes of a running
// job whose resources a job of a higher PriorityTier needs (PreemptType =
// preempt/partition_prio). The one table of the names.
#pragma once

#include <array>
#include <string_view>

#include "proto/named_enum.h"

namespace fsched::proto {

enum class PreemptMode {
  Off,         // no preemption
  Cancel,      // the job is cancelled
  Requeue,     // the job goes back to the queue and starts over (cancelled if --no-requeue)
  Checkpoint,  // the job is checkpointed, stopped and restored once room returns; if its
               // dump fails, it is requeued (cancelled if --no-requeue), as REQUEUE
  Suspend,     // Slurm's SUSPEND,GANG: the job is frozen in place, its CPUs (not its
               // memory) lent to the preemptor, and thawed once they are free again
};

template <>
struct NamedEnumTraits<PreemptMode> {
  static constexpr std::array<EnumName<PreemptMode>, 5> names{{
      {PreemptMode::Off, "OFF"},
      {PreemptMode::Cancel, "CANCEL"},
      {PreemptMode::Requeue, "REQUEUE"},
      {PreemptMode::Checkpoint, "CHECKPOINT"},
      {PreemptMode::Suspend, "SUSPEND"},
  }};
  static constexpr std::string_view kind = "preempt mode";
};

}  // namespace fsched::proto
