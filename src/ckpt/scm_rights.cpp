// Files in flight (SCM_RIGHTS): which file each is, at dump; the restorer's reference
// to each, at restore. See scm_rights.h. Interfaces: kcmp(2) KCMP_FILE,
// /proc/self/fd and /proc/self/fdinfo (proc(5)), fcntl(2) F_GETOWN_EX/F_GETSIG,
// pidfd_getfd(2).
#include "ckpt/scm_rights.h"

#include <fcntl.h>
#include <linux/kcmp.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "ckpt/fsaccess.h"
#include "ckpt/inject.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

bool same_file(pid_t a, int fa, pid_t b, int fb) {
  return ::syscall(SYS_kcmp, a, b, KCMP_FILE, fa, fb) == 0;
}

// An in-flight file that no process of the job holds: what restore needs to open it
// again by path, or a refusal.
Fd record_alone(const DumpProcess& owner, int fd, const std::string& who) {
  const std::string self = fmt::format("/proc/self/fd/{}", fd);
  const std::string link = read_link(self);
  const std::string where = fmt::format("{}: {} in flight in its queue (SCM_RIGHTS)", who, link);
  if (link.rfind("/", 0) != 0)
    fail_unsupported(
        "{}, held by no process of the job: not supported (only regular files, directories "
        "and devices are, when no process holds them)",
        where);
  struct stat st {};
  if (::stat(self.c_str(), &st) < 0) fail_errno("{}: stat", where);
  struct statfs fs {};
  if (::statfs(self.c_str(), &fs) == 0 && fs.f_type == PROC_SUPER_MAGIC)
    fail_unsupported("{}: files of /proc are not supported", where);
  if (link.ends_with(" (deleted)"))
    fail_unsupported("{}: deleted, and held by no process of the job (not supported)", where);
  const FdKind kind = kind_by_type(st, link, where);
  if (kind != FdKind::kFile && kind != FdKind::kDir && kind != FdKind::kChr)
    fail_unsupported("{}: this kind of file ({}) in flight is not supported", where,
                     to_string(kind));
  Fd f;
  f.fd = -1;
  f.kind = kind;
  f.path = link;
  const std::string fdinfo = read_file(fmt::format("/proc/self/fdinfo/{}", fd));
  parse_fdinfo(fdinfo, f);
  if (fdinfo.rfind("lock:", 0) == 0 || fdinfo.find("\nlock:") != std::string::npos)
    fail_unsupported("{}: holds a lock (locks held only through an fd in flight are not supported)",
                     where);
  // The owner and signal of the description (fown.h) would be lost: the restore opens
  // it again.
  f_owner_ex own{};
  if (::fcntl(fd, F_GETOWN_EX, &own) == 0 && own.pid != 0)
    fail_unsupported("{}: has an owner for SIGIO (F_SETOWN), not supported in flight", where);
  if (int sig = ::fcntl(fd, F_GETSIG); sig > 0)
    fail_unsupported("{}: has a signal set with F_SETSIG, not supported in flight", where);
  fd_ops(kind).dump(FdDumpCtx{.proc = owner,
                              .link = link,
                              .fdinfo = fdinfo,
                              .st = st,
                              .deleted = false,
                              .where = where},
                    f);
  return f;
}

}  // namespace

std::vector<InFlightFd> InFlightDump::add(std::vector<UniqueFd> fds, const std::string& who) {
  const pid_t me = ::getpid();
  std::vector<InFlightFd> out;
  for (auto& fd : fds) {
    InFlightFd x;
    for (auto& q : procs_) {
      for (auto& g : q.rec.fds)
        if (same_file(me, fd.get(), q.host_pid, g.fd)) {
          x.pid = q.rec.pid;
          x.fd = g.fd;
          break;
        }
      if (x.pid) break;
    }
    for (std::size_t i = 0; !x.pid && x.file < 0 && i < seen_.size(); ++i)
      if (same_file(me, fd.get(), me, seen_[i].get())) x.file = static_cast<int>(i);
    if (!x.pid && x.file < 0) {
      m_.in_flight.push_back(record_alone(procs_[0], fd.get(), who));
      x.file = static_cast<int>(seen_.size());
      seen_.push_back(std::move(fd));
    }
    out.push_back(x);
  }
  return out;
}

std::vector<UniqueFd> InFlightRestore::files(const ScmRights& r, const Process& owner,
                                             const std::string& who) {
  const Manifest& m = *init_.proc.image;
  std::vector<UniqueFd> out;
  for (const InFlightFd& x : r.fds) {
    const std::string what = fmt::format("{}: a file in flight", who);
    if (x.pid) {
      RestoreProcess* holder = nullptr;
      for (auto& p : procs_)
        if (p.rec->pid == x.pid && !p.rec->zombie) holder = &p;
      if (!holder)
        fail_image("image: {}: held by process {}, which is not in the image", what, x.pid);
      out.push_back(grab_fd(holder->host_pid, x.fd, what));
      continue;
    }
    if (x.file < 0 || static_cast<std::size_t>(x.file) >= m.in_flight.size())
      fail_image("image: {}: no in-flight file {}", what, x.file);
    auto it = opened_.find(x.file);
    if (it == opened_.end()) {
      const Fd& f = m.in_flight[static_cast<std::size_t>(x.file)];
      const std::string of = fmt::format("{} ({})", what, f.path);
      Injector& inj = init_.inj();
      const pid_t ip = init_.host_pid();
      // As the receiving socket's owner: the user controls the path by now.
      act_as(inj, ip, init_.area, &owner, of);
      const FdOps& ops = fd_ops(f.kind);
      long tmp = ops.open(init_, f, of);
      if (ops.seekable && f.pos)
        inj.call_ok(of + ": lseek", SYS_lseek, static_cast<std::uint64_t>(tmp),
                    static_cast<std::uint64_t>(f.pos), SEEK_SET);
      inj.call_ok(of + ": fcntl(F_SETFL)", SYS_fcntl, static_cast<std::uint64_t>(tmp), F_SETFL,
                  static_cast<std::uint64_t>(f.flags & kStatusFlags));
      act_as(inj, ip, init_.area, nullptr, of);
      UniqueFd mine = grab_fd(ip, static_cast<int>(tmp), of);
      inj.call(SYS_close, static_cast<std::uint64_t>(tmp));
      it = opened_.emplace(x.file, std::move(mine)).first;
    }
    UniqueFd again(::fcntl(it->second.get(), F_DUPFD_CLOEXEC, 0));
    if (!again) fail_errno("{}: dup", what);
    out.push_back(std::move(again));
  }
  return out;
}

}  // namespace fsched::ckpt
