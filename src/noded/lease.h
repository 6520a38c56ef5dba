// The node's lease and its guard process (docs/fencing-node.md). A node may let its
// jobs run only while it holds a lease from the controller: each heartbeat that gets
// a successful reply renews it until (the CLOCK_MONOTONIC instant the heartbeat was
// SENT) + (the reply's "lease" seconds). When it runs out, all of the node's jobs are
// frozen (cgroup.freeze of the node's "jobs" cgroup), so that the controller may
// restore them elsewhere once the lease has surely passed.
//
// The freezing is done by a small guard process, not by a thread of fschedd: a
// SIGSTOPped, hung or deadlocked fschedd still fences. The guard shares the lease's
// expiry with fschedd through a MAP_SHARED anonymous page, polls it every
// kPollInterval, and dies with fschedd (PR_SET_PDEATHSIG).
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <string>

namespace fsched::noded {

class Lease {
 public:
  using Clock = std::chrono::steady_clock;  // CLOCK_MONOTONIC, as the guard reads it
  static constexpr std::chrono::milliseconds kPollInterval{200};

  // freeze_file: the jobs cgroup's cgroup.freeze. The lease starts expired: a node
  // that (re)starts does not know whether the controller still counts it alive, so
  // its jobs (adopted after a restart) may run only once a heartbeat succeeded.
  // Maps the shared page; throws fsched::Error if it cannot.
  explicit Lease(std::filesystem::path freeze_file);
  // Stops the guard (SIGKILL) and waits for it. Frozen jobs stay frozen.
  ~Lease();
  Lease(const Lease&) = delete;
  Lease& operator=(const Lease&) = delete;

  // Forks the guard. The guard gets SIGKILL when the THREAD that forked it ends
  // (PR_SET_PDEATHSIG), so call this from the main thread. Throws fsched::Error.
  void start_guard();
  // Re-forks the guard if it died (reaping it). Returns true if it had to.
  bool ensure_guard();
  pid_t guard_pid() const { return guard_; }

  // A heartbeat sent at `sent` got a reply granting `seconds` of lease.
  void renew(Clock::time_point sent, std::chrono::seconds seconds);
  Clock::time_point expiry() const;
  bool expired() const { return Clock::now() >= expiry(); }
  // Whether the guard froze the jobs (and nobody thawed them since).
  bool frozen() const;
  // When the guard froze them (its clock), if frozen().
  Clock::time_point frozen_at() const;
  // errno of the guard's last failed write to cgroup.freeze (0: none).
  int guard_errno() const;
  // Writes 0 to cgroup.freeze and clears the mark; returns whether the guard had
  // frozen the jobs. Throws fsched::Error if the write fails.
  bool thaw();

 private:
  // The page fschedd and its guard share. Lock-free atomics work across processes.
  struct Shared {
    std::atomic<int64_t> expiry_ns;  // CLOCK_MONOTONIC; 0: no lease
    std::atomic<int32_t> frozen;     // 1 once the guard froze the jobs
    std::atomic<int64_t> frozen_at_ns;
    std::atomic<int32_t> error;  // errno of a failed freeze
  };
  static_assert(std::atomic<int64_t>::is_always_lock_free);
  [[noreturn]] static void guard_main(Shared* s, const char* freeze_file, pid_t parent);

  std::string freeze_file_;
  Shared* shared_ = nullptr;
  pid_t guard_ = 0;
};

}  // namespace fsched::noded
