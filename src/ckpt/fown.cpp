// fd owners and signals (fown.h). F_GETOWN_EX reports the owner in the caller's PID
// namespace: the dumper's (the host's), translated here through the frozen tree's host
// PIDs and TIDs; a restored process sets it in its own namespace, the job's.
#include "ckpt/fown.h"

#include <fcntl.h>
#include <sys/syscall.h>

#include "ckpt/inject.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {

void dump_fd_owner(const DumpProcess& p, std::span<DumpProcess> all, Fd& f,
                   const std::string& where) {
  UniqueFd copy = grab_fd(p.host_pid, f.fd, where);
  f_owner_ex o{};
  if (::fcntl(copy.get(), F_GETOWN_EX, &o) < 0) fail_errno("{}: fcntl(F_GETOWN_EX)", where);
  int sig = ::fcntl(copy.get(), F_GETSIG);
  if (sig < 0) fail_errno("{}: fcntl(F_GETSIG)", where);
  f.owner_signal = sig;
  // An owner that has exited leaves no pid visible (0): no signal can go anywhere,
  // the same as no owner.
  if (o.pid == 0) return;
  int ns = 0;
  for (auto& q : all) {
    if (q.zombie) continue;
    if (o.type == F_OWNER_TID) {
      for (std::size_t i = 0; i < q.host_tids.size() && i < q.rec.threads.size(); ++i)
        if (q.host_tids[i] == o.pid) ns = q.rec.threads[i].tid;
    } else if (o.type == F_OWNER_PID) {
      if (q.host_pid == o.pid) ns = q.rec.pid;
    } else if (o.type == F_OWNER_PGRP) {
      // The group's number is its leader's pid, which may have exited: a member of the
      // job in that group (host view, /proc/PID/stat field 5) gives its number in the job.
      if (std::stol(read_stat(q.host_pid).at(4)) == o.pid) ns = q.rec.pgid;
    }
    if (ns) break;
  }
  if (!ns)
    fail_unsupported(
        "{}: its signal-driven I/O owner ({} {} on the host) is not a thread, process or "
        "process group of the job: not supported",
        where,
        o.type == F_OWNER_TID   ? "thread"
        : o.type == F_OWNER_PID ? "process"
                                : "process group",
        o.pid);
  f.owner_type = o.type;
  f.owner = ns;
}

void restore_fd_owners(RestoreProcess& p, const InjectionArea& area) {
  const Process& r = *p.rec;
  Injector& inj = p.leader();
  for (const Fd& f : r.fds) {
    if (f.owner == 0 && f.owner_signal == 0 && !(f.flags & O_ASYNC)) continue;
    std::string who = fmt::format("process {} fd {} ({})", r.pid, f.fd, f.path);
    if (f.owner_signal < 0 || f.owner_signal > 64)
      fail_image("image: {}: bad F_SETSIG signal {}", who, f.owner_signal);
    if (f.owner != 0) {
      if (f.owner_type != F_OWNER_TID && f.owner_type != F_OWNER_PID &&
          f.owner_type != F_OWNER_PGRP)
        fail_image("image: {}: bad owner type {}", who, f.owner_type);
      f_owner_ex o{.type = static_cast<__pid_type>(f.owner_type), .pid = f.owner};
      const std::uint64_t at = area.data();
      remote_write(p.host_pid, at, &o, sizeof o);
      inj.call_ok(who + ": fcntl(F_SETOWN_EX)", SYS_fcntl, static_cast<std::uint64_t>(f.fd),
                  F_SETOWN_EX, at);
      f_owner_ex now{};
      remote_write(p.host_pid, at, &now, sizeof now);
      inj.call_ok(who + ": fcntl(F_GETOWN_EX)", SYS_fcntl, static_cast<std::uint64_t>(f.fd),
                  F_GETOWN_EX, at);
      remote_read(p.host_pid, at, &now, sizeof now);
      if (now.type != o.type || now.pid != o.pid)
        fail("{}: owner set to type {} pid {}, the kernel kept type {} pid {}", who, f.owner_type,
             f.owner, static_cast<int>(now.type), now.pid);
    }
    if (f.owner_signal != 0) {
      inj.call_ok(who + ": fcntl(F_SETSIG)", SYS_fcntl, static_cast<std::uint64_t>(f.fd), F_SETSIG,
                  static_cast<std::uint64_t>(f.owner_signal));
      long now = inj.call_ok(who + ": fcntl(F_GETSIG)", SYS_fcntl, static_cast<std::uint64_t>(f.fd),
                             F_GETSIG);
      if (now != f.owner_signal)
        fail("{}: signal set to {}, the kernel kept {}", who, f.owner_signal, now);
    }
    if (f.flags & O_ASYNC) {
      long fl = inj.call_ok(who + ": fcntl(F_GETFL)", SYS_fcntl, static_cast<std::uint64_t>(f.fd),
                            F_GETFL);
      if (!(fl & O_ASYNC)) {
        inj.call_ok(who + ": fcntl(F_SETFL, O_ASYNC)", SYS_fcntl, static_cast<std::uint64_t>(f.fd),
                    F_SETFL, static_cast<std::uint64_t>(fl | O_ASYNC));
        fl = inj.call_ok(who + ": fcntl(F_GETFL)", SYS_fcntl, static_cast<std::uint64_t>(f.fd),
                         F_GETFL);
        if (!(fl & O_ASYNC)) fail("{}: O_ASYNC did not stay set", who);
      }
    }
  }
}

}  // namespace fsched::ckpt
