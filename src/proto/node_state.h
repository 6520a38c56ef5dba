// A node's state as the controller reports it (GET /v1/nodes, scontrol show node) and
// sinfo's short lowercase form of it. The one table of both.
#pragma once

#include <array>
#include <string_view>

#include "proto/named_enum.h"

namespace fsched::proto {

enum class NodeState {
  Unknown,    // never registered since the controller started
  Down,       // set DOWN: silent for SlurmdTimeout + requeue_timeout, or by an administrator
              // (persisted with its reason); a merely silent node keeps its state and is
              // flagged "not_responding" (sinfo's "*")
  Idle,       // up, no CPU allocated
  Mixed,      // some CPUs allocated
  Allocated,  // all CPUs allocated
  Draining,   // set DRAIN (persisted with its reason): takes no new job; its jobs with
              // checkpointing are moved to other nodes, the others run on until they end
  Drained,    // set DRAIN and no job left on it
};

struct NodeStateName {
  NodeState value;
  std::string_view name, sinfo;  // "ALLOCATED", "alloc"
};
inline constexpr std::array<NodeStateName, 7> kNodeStateNames{{
    {NodeState::Unknown, "UNKNOWN", "unk"},
    {NodeState::Down, "DOWN", "down"},
    {NodeState::Idle, "IDLE", "idle"},
    {NodeState::Mixed, "MIXED", "mix"},
    {NodeState::Allocated, "ALLOCATED", "alloc"},
    {NodeState::Draining, "DRAINING", "drng"},
    {NodeState::Drained, "DRAINED", "drain"},
}};

template <>
struct NamedEnumTraits<NodeState> {
  static constexpr std::array<EnumName<NodeState>, kNodeStateNames.size()> names = [] {
    std::array<EnumName<NodeState>, kNodeStateNames.size()> a{};
    for (size_t i = 0; i < a.size(); ++i)
      a[i] = {kNodeStateNames[i].value, kNodeStateNames[i].name};
    return a;
  }();
  static constexpr std::string_view kind = "node state";
};

// sinfo's name of s ("alloc").
constexpr std::string_view sinfo_name(NodeState s) {
  for (const auto& n : kNodeStateNames)
    if (n.value == s) return n.sinfo;
  return "unk";
}

}  // namespace fsched::proto
