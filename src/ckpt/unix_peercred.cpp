// Peer credentials of Unix sockets (unix_peercred.h).
#include "ckpt/unix_peercred.h"

#include <linux/sched.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <csignal>
#include <vector>

#include "ckpt/fsaccess.h"
#include "ckpt/inject.h"
#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

std::vector<unsigned> peer_groups(int sock, const std::string& who) {
  std::vector<gid_t> g(64);
  for (;;) {
    socklen_t len = static_cast<socklen_t>(g.size() * sizeof(gid_t));
    if (::getsockopt(sock, SOL_SOCKET, SO_PEERGROUPS, g.data(), &len) == 0) {
      g.resize(len / sizeof(gid_t));
      break;
    }
    // ERANGE: len says how much room the list needs (at most NGROUPS_MAX).
    if (errno != ERANGE || len / sizeof(gid_t) <= g.size() || len > 65536 * sizeof(gid_t))
      fail_errno("{}: SO_PEERGROUPS", who);
    g.resize(len / sizeof(gid_t));
  }
  std::vector<unsigned> out(g.begin(), g.end());
  std::sort(out.begin(), out.end());
  return out;
}

ucred peer_ucred(int sock, const std::string& who) {
  ucred cr{};
  socklen_t len = sizeof cr;
  if (::getsockopt(sock, SOL_SOCKET, SO_PEERCRED, &cr, &len) < 0)
    fail_errno("{}: SO_PEERCRED", who);
  return cr;
}

}  // namespace

PeerCred dump_peer_cred(int sock, DumpProcess& holder, int fd, std::span<const DumpProcess> procs,
                        const std::string& who) {
  PeerCred c;
  const ucred cr = peer_ucred(sock, who);
  // No credentials: pid 0 and the overflow ids (sk_peer_cred unset).
  if (cr.pid == 0) return c;
  c.set = true;
  c.uid = cr.uid;
  c.gid = cr.gid;
  c.groups = peer_groups(sock, who);
  for (const DumpProcess& p : procs)
    if (p.host_pid == cr.pid) {  // a zombie too
      c.pid = p.rec.pid;
      return c;
    }
  // Its maker has exited (or is outside the job): the kernel still holds its pid, and
  // the socket's holder, asked in the job's PID namespace, gets its number there (0
  // outside it).
  // (The dump closed its injection before the files: open it again for this call.)
  ucred in_job{};
  socklen_t len = sizeof in_job;
  with_injection(holder, [&] {
    remote_write(holder.host_pid, holder.scratch + 64, &len, sizeof len);
    holder.inj->call_ok(who + ": SO_PEERCRED (in the job)", SYS_getsockopt,
                        static_cast<std::uint64_t>(fd), SOL_SOCKET, SO_PEERCRED, holder.scratch,
                        holder.scratch + 64);
    remote_read(holder.host_pid, holder.scratch, &in_job, sizeof in_job);
  });
  if (in_job.pid <= 0)
    fail_unsupported(
        "{}: its peer credentials name process {} outside the job (it made the socket, which "
        "came into the job through SCM_RIGHTS or a fork outside it): not supported (the job "
        "would see pid 0 before and another after a restore)",
        who, cr.pid);
  c.pid = in_job.pid;
  return c;
}

StandIns::~StandIns() {
  for (auto& [pid, p] : made_) {
    // Not one of the job's: SIGKILL acts at once, even on a traced task.
    p.leader().abandon();
    ::kill(p.host_pid, SIGKILL);
    int st = 0;
    while (::waitpid(p.host_pid, &st, __WALL) == p.host_pid && !WIFEXITED(st) && !WIFSIGNALED(st))
      ;
    // Released to its parent, init, as a zombie that sent no signal.
    init_.leader().call(SYS_wait4, static_cast<std::uint64_t>(pid), 0, __WALL, 0);
  }
}

RestoreProcess* StandIns::get(int pid, const std::string& what) {
  if (auto it = made_.find(pid); it != made_.end()) return &it->second;
  Injector& inj = init_.leader();
  pid_t tid_arg = pid;
  remote_write(init_.host_pid, area_.data(), &tid_arg, sizeof tid_arg);
  clone_args args{};
  args.exit_signal = 0;
  args.set_tid = area_.data();
  args.set_tid_size = 1;
  remote_write(init_.host_pid, area_.data() + 64, &args, sizeof args);
  long r = inj.call(SYS_clone3, area_.data() + 64, sizeof args);
  if (r == -EEXIST) return nullptr;
  if (r < 0)
    throw Error(fmt::format("{}: a stand-in for process {}, its maker (clone3)", what, pid),
                static_cast<int>(-r));
  Process& rec = recs_[pid];
  rec.pid = pid;
  RestoreProcess& p = made_[pid];
  p.image = init_.image;
  p.rec = &rec;
  p.host_pid = inj.last_child();
  wait_for_stop(p.host_pid);
  RestoreThread t;
  t.host_tid = p.host_pid;
  t.inj = std::make_unique<Injector>(p.host_pid, area_.code());
  p.threads.push_back(std::move(t));
  if (r != pid) fail("{}: the stand-in for process {} got pid {}", what, pid, r);
  return &p;
}

bool StandIns::has(const RestoreProcess& p) const {
  auto it = made_.find(p.rec->pid);
  return it != made_.end() && &it->second == &p;
}

RestoreProcess* peer_cred_maker(std::span<RestoreProcess> procs, StandIns& stand_ins,
                                const PeerCred& c, const std::string& what) {
  if (!c.set || c.pid <= 0) return nullptr;  // an image of format 7 or older
  for (RestoreProcess& p : procs)
    if (p.rec->pid == c.pid) return &p;  // a zombie too: make_zombies() comes later
  return stand_ins.get(c.pid, what);
}

void with_peer_cred(RestoreProcess& where, const InjectionArea& area, const PeerCred& c,
                    const Process* baseline, const std::string& what,
                    const std::function<void()>& call) {
  if (!c.set) {
    call();
    return;
  }
  Injector& inj = where.leader();
  const pid_t pid = where.host_pid;
  if (c.groups.size() * sizeof(gid_t) > area.data_size() / 2)
    fail_image("image: {}: too many peer groups", what);
  std::vector<gid_t> groups(c.groups.begin(), c.groups.end());
  if (!groups.empty()) remote_write(pid, area.data(), groups.data(), groups.size() * sizeof(gid_t));
  inj.call_ok(what + ": setgroups (its peer's)", SYS_setgroups, groups.size(), area.data());
  inj.call_ok(what + ": setresgid (its peer's)", SYS_setresgid, static_cast<std::uint64_t>(-1),
              c.gid, static_cast<std::uint64_t>(-1));
  inj.call_ok(what + ": setresuid (its peer's)", SYS_setresuid, static_cast<std::uint64_t>(-1),
              c.uid, static_cast<std::uint64_t>(-1));
  std::exception_ptr err;
  try {
    call();
  } catch (...) {
    err = std::current_exception();
  }
  // Root again (its saved uid), then its own file-system credentials.
  inj.call_ok(what + ": setresuid back", SYS_setresuid, static_cast<std::uint64_t>(-1), 0,
              static_cast<std::uint64_t>(-1));
  inj.call_ok(what + ": setresgid back", SYS_setresgid, static_cast<std::uint64_t>(-1), 0,
              static_cast<std::uint64_t>(-1));
  act_as(inj, pid, area, baseline, what);
  if (err) std::rethrow_exception(err);
}

void take_peer_cred_in_this_thread(const PeerCred& c, const std::string& what) {
  if (!c.set) return;
  std::vector<gid_t> groups(c.groups.begin(), c.groups.end());
  // Raw system calls: glibc's wrappers would change every thread of the restorer. Root
  // first (the saved uid), should an earlier call have taken other ids.
  if (::syscall(SYS_setresuid, -1, 0, -1) < 0 ||
      ::syscall(SYS_setgroups, groups.size(), groups.data()) < 0 ||
      ::syscall(SYS_setresgid, -1, c.gid, -1) < 0 || ::syscall(SYS_setresuid, -1, c.uid, -1) < 0)
    fail_errno("{}: taking its peer's credentials", what);
}

void check_peer_cred(int sock, const PeerCred& c, pid_t host_pid, const std::string& what) {
  if (!c.set) return;
  const ucred cr = peer_ucred(sock, what);
  const std::vector<unsigned> groups = peer_groups(sock, what);
  std::vector<unsigned> want = c.groups;
  std::sort(want.begin(), want.end());
  if (cr.uid != c.uid || cr.gid != c.gid || groups != want)
    fail(
        "restore: {}: peer credentials uid {} gid {} ({} groups) instead of uid {} gid {} ({} "
        "groups)",
        what, cr.uid, cr.gid, groups.size(), c.uid, c.gid, want.size());
  if (host_pid > 0 && cr.pid != host_pid)
    fail("restore: {}: peer pid {} instead of {}", what, cr.pid, host_pid);
}

}  // namespace fsched::ckpt
