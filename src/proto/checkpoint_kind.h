// What a checkpoint's image holds (docs/incremental.md), as the API, SQLite and
// `scontrol checkpoint list` name it.
#pragma once

#include <array>

#include "proto/named_enum.h"

namespace fsched::proto {

enum class CheckpointKind {
  Full,         // every page of the job: restorable alone
  Incremental,  // the pages written since its parent checkpoint, which it needs
  // CRIU_PreDump: its memory was copied while the job ran (a pre-dump image, DIR.pre
  // beside it), and only what changed since was dumped in the freeze; it needs DIR.pre
  PreDump,
};

template <>
struct NamedEnumTraits<CheckpointKind> {
  static constexpr std::array<EnumName<CheckpointKind>, 3> names{{
      {CheckpointKind::Full, "full"},
      {CheckpointKind::Incremental, "incremental"},
      {CheckpointKind::PreDump, "pre-dump"},
  }};
  static constexpr std::string_view kind = "checkpoint kind";
};

}  // namespace fsched::proto
