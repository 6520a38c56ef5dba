// The cgroup v2 freezer of a job's own cgroup, held by a dump for the moments in which
// the job must not run even if the dumper is killed (SIGKILL by CheckpointTimeout, OOM):
// while one of its TCP sockets is in repair mode (inet.cpp), a thread let go by its
// dying tracer would read EPERM from recv(2) or have what it sends queued without
// being transmitted, or appended to the receive queue.
//
// Why a freeze outlives the dumper: writing 1 to cgroup.freeze sets a freeze trap on
// every task of the cgroup and its descendants (Documentation/admin-guide/cgroup-v2.rst,
// "cgroup.freeze"). A task stopped by ptrace (PTRACE_INTERRUPT) is not woken by it, but
// when its tracer exits and ptrace lets it go (ptrace(2), "the tracer dies"), it meets
// the trap before it returns to user space and stays frozen until 0 is written. The
// network lock's guardian (netlock.h) holds the cgroup.freeze file and writes 0 after
// it has taken every socket out of repair mode.
//
// Only a cgroup of the job's own is frozen: not the root, not already frozen, holding
// no process but the job's and its init's parent (fsched's launcher: the scheduler's
// run cgroup, or `fsched-ckpt run` started in a cgroup of its own). Anything else
// (another user's process, the dumper itself) must not be stopped by a dump, so such a
// job is dumped without this protection, as before: the window is then the few
// microseconds between the dumper's death and the guardian's undo.
#pragma once

#include <sys/types.h>

#include <span>
#include <string>

#include "common/fd.h"

namespace fsched::ckpt {

struct DumpProcess;

// Where cgroup2 is mounted here (the first cgroup2 line of /proc/self/mounts); "" if
// nowhere.
std::string cgroup2_mount();
// The cgroup v2 path of process `pid` ("0::PATH" in /proc/PID/cgroup, cgroups(7)); ""
// if it has none. Throws Error when /proc/PID/cgroup cannot be read.
std::string cgroup2_path(pid_t pid);

class JobFreezer {
 public:
  // An inert freezer: usable() is false.
  JobFreezer() = default;
  // The freezer of the cgroup v2 of `procs[0]` (the job's init; host PIDs in
  // DumpProcess::host_pid) when that cgroup is the job's own (see above); otherwise an
  // inert freezer whose reason() says why. Does not freeze. Throws nothing: a cgroup
  // that cannot be read is a reason, not an error.
  static JobFreezer for_job(std::span<const DumpProcess> procs);
  JobFreezer(JobFreezer&&) = default;
  JobFreezer& operator=(JobFreezer&&) = default;
  // A freezer destroyed while frozen thaws.
  ~JobFreezer();

  // Whether freeze() will freeze anything.
  bool usable() const { return static_cast<bool>(file_); }
  // Why the freezer is inert ("" when usable).
  const std::string& reason() const { return reason_; }
  // The cgroup's directory below the cgroup2 mount ("/..."), for messages.
  const std::string& path() const { return path_; }
  // cgroup.freeze, open for writing (-1 when inert): for the guardian.
  int file() const { return file_.get(); }

  // Writes 1 to cgroup.freeze (nothing when inert or already frozen by this freezer).
  // Every task of the job is held by the dump (ptrace) when this is called, so there is
  // nothing to wait for. Throws Error (errno) when the write fails.
  void freeze();
  // Writes 0 (nothing when not frozen by this freezer). Errors are ignored: the
  // guardian, which holds the same file, is the last resort.
  void thaw() noexcept;

 private:
  UniqueFd file_;
  std::string path_;
  std::string reason_;
  bool frozen_ = false;
};

}  // namespace fsched::ckpt
