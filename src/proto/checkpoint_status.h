// The status of a checkpoint (docs/scheduler.md "Checkpoints"), as the API, SQLite
// and `scontrol checkpoint list` name it.
#pragma once

#include <array>

#include "proto/named_enum.h"

namespace fsched::proto {

enum class CheckpointStatus {
  Creating,  // the dump is under way (or its outcome not yet reported by its node)
  Present,   // a complete image on disk, restorable
  Cleared,   // its image was removed: retention, scontrol checkpoint delete, or found missing
  Timeout,   // the dump exceeded CRIU_Timeout; its image was removed
  Failed,    // the dump failed, or a restore from it did (then its image is kept)
  Skipped,   // a periodic checkpoint not taken: the node was too busy (CRIU_LoadAware)
};

template <>
struct NamedEnumTraits<CheckpointStatus> {
  static constexpr std::array<EnumName<CheckpointStatus>, 6> names{{
      {CheckpointStatus::Creating, "Creating"},
      {CheckpointStatus::Present, "Present"},
      {CheckpointStatus::Cleared, "Cleared"},
      {CheckpointStatus::Timeout, "Timeout"},
      {CheckpointStatus::Failed, "Failed"},
      {CheckpointStatus::Skipped, "Skipped"},
  }};
  static constexpr std::string_view kind = "checkpoint status";
};

}  // namespace fsched::proto
