// Peer credentials of Unix sockets (unix_peercred.h).
#include "ckpt/unix_peercred.h"

#include <sys/socket.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
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

PeerCred dump_peer_cred(int sock, std::span<const DumpProcess> procs, const std::string& who) {
  PeerCred c;
  const ucred cr = peer_ucred(sock, who);
  // No credentials: pid 0 and the overflow ids (sk_peer_cred unset).
  if (cr.pid == 0) return c;
  c.set = true;
  c.uid = cr.uid;
  c.gid = cr.gid;
  c.groups = peer_groups(sock, who);
  for (const DumpProcess& p : procs)
    if (p.host_pid == cr.pid && !p.zombie) c.pid = p.rec.pid;
  return c;
}

RestoreProcess* peer_cred_process(std::span<RestoreProcess> procs, const PeerCred& c) {
  if (!c.set || c.pid <= 0) return nullptr;
  for (RestoreProcess& p : procs)
    if (p.rec->pid == c.pid && !p.rec->zombie) return &p;
  return nullptr;
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
