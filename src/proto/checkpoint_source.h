// What triggered a checkpoint (docs/scheduler.md "Checkpoints"), as the API, SQLite
// and `scontrol checkpoint list` name it.
#pragma once

#include <array>

#include "proto/named_enum.h"

namespace fsched::proto {

enum class CheckpointSource {
  Periodic,  // the job's --checkpoint interval
  Manual,    // scontrol checkpoint create: the job keeps running
  Vacate,    // scontrol checkpoint vacate: the job stops once dumped
  Drain,     // its node was set DRAIN: the job stops once dumped and is restored elsewhere
  Suspend,   // scontrol suspend: the job stops once dumped, until scontrol resume
  Preempt,   // a job of a higher PriorityTier needs its resources (PreemptMode=CHECKPOINT)
};

template <>
struct NamedEnumTraits<CheckpointSource> {
  static constexpr std::array<EnumName<CheckpointSource>, 6> names{{
      {CheckpointSource::Periodic, "periodic"},
      {CheckpointSource::Manual, "manual"},
      {CheckpointSource::Vacate, "vacate"},
      {CheckpointSource::Drain, "node drain"},
      {CheckpointSource::Suspend, "suspend"},
      {CheckpointSource::Preempt, "preemption"},
  }};
  static constexpr std::string_view kind = "checkpoint source";
};

// Whether a checkpoint from s stops the job once its image is written (the others
// leave it running).
constexpr bool stops_job(CheckpointSource s) {
  return s != CheckpointSource::Periodic && s != CheckpointSource::Manual;
}

}  // namespace fsched::proto
