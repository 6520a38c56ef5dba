// The enum classes of the API (src/proto/*_state.h, checkpoint_*.h): every enumerator
// has one name, names read back to the same enumerator, and anything else is an error.
#include <gtest/gtest.h>

#include <fmt/format.h>

#include "cmds/format.h"
#include "proto/checkpoint_source.h"
#include "proto/checkpoint_status.h"
#include "proto/job_state.h"
#include "proto/node_state.h"
#include "proto/preempt_mode.h"

namespace {

using nlohmann::json;
using namespace fsched::proto;

template <typename E>
void expect_round_trip(int count) {
  ASSERT_EQ(static_cast<int>(NamedEnumTraits<E>::names.size()), count);
  for (int i = 0; i < count; ++i) {
    auto e = static_cast<E>(i);
    std::string_view name = to_string(e);
    EXPECT_NE(name, "?") << "enumerator " << i << " has no name";
    EXPECT_EQ(parse_enum<E>(name), e) << name;
    EXPECT_EQ(json(e), json(std::string(name)));
    EXPECT_EQ(json(e).template get<E>(), e) << name;
    EXPECT_EQ(fmt::format("{}", e), name);
  }
}

}  // namespace

TEST(ApiEnums, EveryEnumeratorHasOneNameThatReadsBack) {
  expect_round_trip<JobState>(9);
  expect_round_trip<CheckpointStatus>(6);
  expect_round_trip<CheckpointSource>(6);
  expect_round_trip<PreemptMode>(5);
  expect_round_trip<NodeState>(7);
}

TEST(ApiEnums, NamesAreTheWireNames) {
  // docs/scheduler.md: these strings are the API; changing one breaks clients and
  // databases.
  EXPECT_EQ(json(JobState::NodeFail), "NODE_FAIL");
  EXPECT_EQ(json(JobState::Cancelled), "CANCELLED");
  EXPECT_EQ(json(CheckpointStatus::Present), "Present");
  EXPECT_EQ(json(CheckpointSource::Vacate), "vacate");
  EXPECT_EQ(json(CheckpointSource::Drain), "node drain");
  EXPECT_EQ(json(CheckpointSource::Suspend), "suspend");
  EXPECT_EQ(json(CheckpointSource::Preempt), "preemption");
  EXPECT_EQ(json(JobState::Suspended), "SUSPENDED");
  EXPECT_EQ(short_code(JobState::Suspended), "S");
  EXPECT_EQ(json(NodeState::Draining), "DRAINING");
  EXPECT_EQ(json(NodeState::Drained), "DRAINED");
  EXPECT_EQ(json(NodeState::Allocated), "ALLOCATED");
  EXPECT_EQ(short_code(JobState::Pending), "PD");
  EXPECT_EQ(short_code(JobState::Timeout), "TO");
  EXPECT_EQ(sinfo_name(NodeState::Mixed), "mix");
}

TEST(ApiEnums, UnknownNamesAreErrorsNotTheFirstEnumerator) {
  for (const json& bad : {json("PREEMPTED"), json("pending"), json(""), json(3), json(nullptr)}) {
    try {
      (void)bad.get<JobState>();
      FAIL() << "accepted " << bad.dump();
    } catch (const json::exception& e) {
      EXPECT_NE(std::string(e.what()).find("unknown job state " + bad.dump()), std::string::npos)
          << e.what();
      EXPECT_NE(std::string(e.what()).find("expected one of PENDING, RUNNING"), std::string::npos)
          << e.what();
    }
  }
  EXPECT_THROW((void)json("present").get<CheckpointStatus>(), json::exception);
  EXPECT_THROW((void)json("Periodic").get<CheckpointSource>(), json::exception);
}

TEST(ApiEnums, CommandsUseTheSharedTable) {
  for (const auto& s : kJobStateNames) {
    EXPECT_EQ(fsched::cmds::state_code(s.name), s.code);
    EXPECT_EQ(fsched::cmds::parse_job_state(s.code), s.name);
  }
  EXPECT_EQ(fsched::cmds::state_code("PREEMPTED"), "PREEMPTED");  // a newer controller's: as it is
  for (const auto& n : kNodeStateNames) EXPECT_EQ(fsched::cmds::sinfo_state(n.name), n.sinfo);
}
