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
};

template <>
struct NamedEnumTraits<CheckpointSource> {
  static constexpr std::array<EnumName<CheckpointSource>, 3> names{{
      {CheckpointSource::Periodic, "periodic"},
      {CheckpointSource::Manual, "manual"},
      {CheckpointSource::Vacate, "vacate"},
  }};
  static constexpr std::string_view kind = "checkpoint source";
};

}  // namespace fsched::proto
