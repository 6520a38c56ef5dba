// The dump's view of the job: its frozen process tree (FrozenTree, pstree.cpp) and,
// per process, what every kind's dump function reads and fills (DumpProcess): host
// PID and TIDs, the manifest record, and the syscall-injection context with its
// scratch mapping. Kernel interfaces: ptrace(2) PTRACE_SEIZE / PTRACE_INTERRUPT to
// freeze every task; syscall injection through the process's vDSO (inject.h).
#pragma once

#include <signal.h>

#include <sys/types.h>

#include <cstdint>
#include <type_traits>
#include <functional>
#include <memory>
#include <vector>

#include "ckpt/inject.h"
#include "ckpt/manifest.h"
#include "common/error.h"

namespace fsched::ckpt {

// One process of the frozen tree.
struct DumpProcess {
  pid_t host_pid = 0;
  std::vector<pid_t> host_tids;  // host TIDs, thread-group leader first; none for a zombie
  bool zombie = false;
  int stop_signal = 0;  // the job-control stop it was in when seized (Process::stop_signal)
  Process rec;          // what goes into the manifest
  // Syscall injection into the leader, with a scratch mapping of kScratchBytes.
  std::unique_ptr<Injector> inj;
  HealCode heal;  // where injected syscalls run, in its vDSO (inject.h)
  // The job's init holds the engine's userfaultfds (mem_tracking.h): a mapping
  // registered for write-protect ("uw" in VmFlags) is the engine's doing.
  bool uffd_wp_ours = false;
  std::uint64_t scratch = 0;
};
inline constexpr std::size_t kScratchBytes = 4 * 4096;

// A freeze that could not complete for a passing reason (a task in vfork, exiting);
// the dump thaws the job and tries again.
class FreezeBusy : public Error {
 public:
  using Error::Error;
};

// pstree.cpp: every thread of every process of the tree rooted at host PID `root`,
// seized and stopped (PTRACE_SEIZE + PTRACE_INTERRUPT, re-scanning until no task
// appears). Destruction thaws (detaches) all tasks unless kill() was called.
// Throws FreezeBusy if a task cannot be stopped now, Error otherwise.
class FrozenTree {
 public:
  explicit FrozenTree(pid_t root);
  ~FrozenTree();
  FrozenTree(const FrozenTree&) = delete;
  FrozenTree& operator=(const FrozenTree&) = delete;

  // Processes, parents before children (breadth first, by PID).
  std::vector<DumpProcess>& processes() { return procs_; }
  // SIGKILL the job's init: the kernel kills its whole PID namespace. `killed` is
  // called once the signal is sent (the job can no longer run: its freeze is over),
  // before the tasks are reaped, which for a large job takes a while (the kernel
  // frees its memory).
  void kill(const std::function<void()>& killed = {});
  // Detaches every task, letting the job continue.
  void thaw();

 private:
  pid_t root_;
  std::vector<DumpProcess> procs_;
  bool done_ = false;
};

// pstree.cpp: opens the injection context of p (p.inj, and p.scratch: a scratch
// mapping of kScratchBytes in the job); undone by close_injection, which also puts
// the leader's registers back. Throws Error naming the process.
void open_injection(DumpProcess& p);
void close_injection(DumpProcess& p);

// While registers of the job's threads are borrowed for injected syscalls, a Ctrl-C
// must not kill the dumper: the kernel would resume them with those registers. Blocks
// SIGINT, SIGTERM, SIGHUP and SIGQUIT in the calling thread for its lifetime
// (sigprocmask(2)).
class TermSignalsBlocked {
 public:
  TermSignalsBlocked();
  ~TermSignalsBlocked();
  TermSignalsBlocked(const TermSignalsBlocked&) = delete;
  TermSignalsBlocked& operator=(const TermSignalsBlocked&) = delete;

 private:
  sigset_t old_{};
};

// Runs `f` with p's injection context open, a Ctrl-C held off meanwhile: opened for
// the call (and closed after, also when `f` throws) when the dump has already closed
// it. Returns what `f` returns; throws what open_injection or `f` throws.
template <class F>
auto with_injection(DumpProcess& p, F&& f) {
  TermSignalsBlocked blocked;
  const bool reopen = !p.inj;
  if (reopen) open_injection(p);
  try {
    if constexpr (std::is_void_v<decltype(f())>) {
      f();
      if (reopen) close_injection(p);
    } else {
      auto r = f();
      if (reopen) close_injection(p);
      return r;
    }
  } catch (...) {
    if (reopen) close_injection(p);
    throw;
  }
}

}  // namespace fsched::ckpt
