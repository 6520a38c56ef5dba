// Written-page tracking of a job from one dump to the next (issue 14,
// docs/incremental.md); the kernel side is written_pages.h.
//
// Between dumps the engine's handles live in the job's init (fsched-init, our own
// program, which lives exactly as long as the job): one userfaultfd per tracked
// process, made in that process by injection and taken by init (pidfd_getfd(2)), and
// a memfd named "fsched-tracking" holding the state as JSON (TrackingState). The dump
// of init leaves these out (is_tracking_handle). A restored job has none: its next
// checkpoint is full.
//
// The state's epoch names the image whose reset the written bits belong to. It reads
// "resetting" from before the first reset of a dump until that dump's image is
// committed, so that a dump that fails or is killed in between leaves the tracking
// unusable (the next checkpoint is full) rather than wrong.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "ckpt/dump_context.h"
#include "ckpt/written_pages.h"
#include "common/fd.h"

namespace fsched::ckpt {

// The name of init's memfd, as /proc/PID/fd shows it ("/memfd:fsched-tracking (deleted)").
inline constexpr std::string_view kTrackingMemfdName = "fsched-tracking";
// Largest state a dump reads back, in bytes.
inline constexpr std::size_t kMaxTrackingStateBytes = 1u << 20;

// One tracked process.
struct TrackedProcess {
  int pid = 0;                   // in the job's PID namespace
  std::uint64_t start_time = 0;  // /proc/PID/stat field 22 (clock ticks): a reused pid differs
  int init_fd = -1;              // the userfaultfd's number in init
};

struct TrackingState {
  std::string epoch;  // image id of the last reset; "resetting"; "" for none
  std::vector<TrackedProcess> procs;
};

// Whether fd `link` (readlink of /proc/PID/fd/N) of the job's init is one of the
// engine's handles, which the dump leaves out.
bool is_tracking_handle(std::string_view link);

// A dump's view of the tracking: attach() with the tree frozen and the injection
// contexts open.
class JobTracking {
 public:
  // Finds the state in init (procs.front(), pid 1); none yet: an empty state. Throws
  // Error if the state is there but cannot be read or parsed, or if another dump of
  // the job holds it.
  //
  // The lock: one dumper process at a time may read, reset and write the tracking, or
  // the written bits of one would be reset by the other unseen. It is a POSIX record
  // lock (fcntl(2) F_SETLK) on the state's memfd, taken here (or by
  // claim_for_pre_copy, or by prepare() on a memfd it makes) and held until the
  // process closes its references to the memfd, at the end of the dump.
  static JobTracking attach(std::span<DumpProcess> procs);

  // The epoch found ("" if none).
  const std::string& epoch() const { return state_.epoch; }

  // The tracking state claimed by a pre-copy round: the state as claimed, and our
  // reference to its memfd, which holds the state's lock (below) until the dump ends.
  struct Claim {
    TrackingState state;
    UniqueFd memfd;
  };
  // Before a dump's freeze, with the job running (precopy.h): when the state in the
  // job's init (host pid `init_host_pid`) names `parent_id` and no other dump holds
  // it, locks it, marks it "pre-copy <random>" and returns it; its epoch is then what
  // the dump's attach() must find for the written bits to still go back to the parent.
  // nullopt, with nothing changed, when the job has no state, it names another image,
  // or another dump holds it. Throws Error when the state cannot be read or written.
  static std::optional<Claim> claim_for_pre_copy(pid_t init_host_pid, const std::string& parent_id);

  // Makes every live process of the job tracked: its userfaultfd from init when it is
  // the same process (pid and start time), else a new one made in it by injection and
  // handed to init. Registers the private, non-kernel VMAs of each (those the kernel
  // refuses stay untracked: every page of theirs reads as written). Marks the state
  // "resetting" in init before returning. Throws Error naming the process.
  void prepare(std::span<DumpProcess> procs);

  // The states of the pages of [start, end) of process `pid` (in the job) since the
  // last reset, resetting them; nullopt when that process or range is not tracked.
  // PageStates::file is looked for with `report_file` (a private file mapping). Throws
  // Error naming the process.
  std::optional<std::vector<PageStates>> reset_scan(const DumpProcess& p, std::uint64_t start,
                                                    std::uint64_t end, bool report_file);

  // Resets every tracked range (a pre-dump, before it thaws the job and reads the
  // pages of the running job). Throws Error naming the process.
  void reset_all();

  // After the image with id `image_id` was committed: the state names it.
  void commit(const std::string& image_id);

 private:
  JobTracking() = default;
  void read_state();
  void write_state();

  TrackingState state_;
  UniqueFd memfd_;  // our reference to init's memfd
  struct Live {
    int pid = 0;
    UniqueFd uffd;                                                 // our reference
    UniqueFd pagemap;                                              // /proc/PID/pagemap
    std::vector<std::pair<std::uint64_t, std::uint64_t>> tracked;  // registered ranges
  };
  std::vector<Live> live_;
};

}  // namespace fsched::ckpt
