// Credentials and per-process attributes: uids, gids, supplementary groups,
// dumpable flag, umask, personality and resource limits. Limits are read and set by
// the process itself (prlimit64(2) on pid 0): root here lacks CAP_SYS_RESOURCE and
// may not touch another user's limits. Credentials are set last (setgroups(2),
// setresgid(2), setresuid(2) in every thread), since they drop the privileges the
// other restore steps need; capabilities, securebits, no_new_privs and seccomp filters
// around them (confine.h).
#include "ckpt/creds.h"

#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>

#include "ckpt/confine.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

const char* const kRlimitNames[] = {"CPU",      "FSIZE",  "DATA",    "STACK", "CORE",  "RSS",
                                    "NPROC",    "NOFILE", "MEMLOCK", "AS",    "LOCKS", "SIGPENDING",
                                    "MSGQUEUE", "NICE",   "RTPRIO",  "RTTIME"};

std::vector<unsigned> to_uints(const std::vector<long long>& v) {
  return std::vector<unsigned>(v.begin(), v.end());
}

}  // namespace

void dump_creds(DumpProcess& p) {
  Process& r = p.rec;
  auto st = read_status(p.host_pid);
  r.uids = to_uints(parse_ints(st["Uid"]));
  r.gids = to_uints(parse_ints(st["Gid"]));
  r.groups = to_uints(parse_ints(st["Groups"]));
  if (r.uids.size() != 4 || r.gids.size() != 4) fail("malformed /proc/{}/status", p.host_pid);
  r.umask = static_cast<unsigned>(std::stoul(st["Umask"], nullptr, 8));
  r.personality = static_cast<unsigned>(
      std::stoul(read_file(fmt::format("/proc/{}/personality", p.host_pid)), nullptr, 16));
  r.dumpable =
      static_cast<int>(p.inj->call_ok("prctl(PR_GET_DUMPABLE)", SYS_prctl, PR_GET_DUMPABLE));
  r.rlimits.clear();
  for (int res = 0; res < RLIMIT_NLIMITS; ++res) {
    p.inj->call_ok(fmt::format("prlimit64(RLIMIT_{})", kRlimitNames[res]), SYS_prlimit64, 0,
                   static_cast<std::uint64_t>(res), 0, p.scratch);
    rlimit64 rl{};
    remote_read(p.host_pid, p.scratch, &rl, sizeof rl);
    r.rlimits.push_back({res, rl.rlim_cur, rl.rlim_max});
  }
}

void restore_process_attrs(RestoreProcess& p, const InjectionArea& area) {
  const Process& r = *p.rec;
  Injector& inj = p.leader();
  inj.call(SYS_umask, r.umask);
  inj.call_ok(fmt::format("process {}: personality", r.pid), SYS_personality, r.personality);
  for (auto& rl : r.rlimits) {
    if (rl.resource < 0 || rl.resource >= RLIMIT_NLIMITS)
      fail_image("image: bad rlimit {}", rl.resource);
    rlimit64 v{rl.cur, rl.max};
    remote_write(p.host_pid, area.data(), &v, sizeof v);
    long e = inj.call(SYS_prlimit64, 0, static_cast<std::uint64_t>(rl.resource), area.data(), 0);
    if (e < 0)
      throw Error(fmt::format("process {}: cannot set RLIMIT_{} to {}/{} (raising a hard limit "
                              "needs CAP_SYS_RESOURCE)",
                              r.pid, kRlimitNames[rl.resource], rl.cur, rl.max),
                  static_cast<int>(-e));
  }
}

void restore_creds(RestoreProcess& p, const InjectionArea& area) {
  const Process& r = *p.rec;
  if (r.uids.size() != 4 || r.gids.size() != 4)
    fail_image("image: bad credentials of process {}", r.pid);
  std::vector<gid_t> groups(r.groups.begin(), r.groups.end());
  if (groups.size() * sizeof(gid_t) > 4096)
    fail_image("image: too many groups in process {}", r.pid);
  for (auto& t : p.threads) {
    Injector& inj = *t.inj;
    std::string who = fmt::format("process {} thread {}", r.pid, t.rec->tid);
    confine_before_ids(inj, t.host_tid, area, t.rec->confinement, who);
    if (!groups.empty())
      remote_write(p.host_pid, area.data(), groups.data(), groups.size() * sizeof(gid_t));
    inj.call_ok(who + ": setgroups", SYS_setgroups, groups.size(), area.data());
    inj.call_ok(who + ": setresgid", SYS_setresgid, r.gids[0], r.gids[1], r.gids[2]);
    inj.call_ok(who + ": setresuid", SYS_setresuid, r.uids[0], r.uids[1], r.uids[2]);
    inj.call(SYS_setfsgid, r.gids[3]);
    inj.call(SYS_setfsuid, r.uids[3]);
    confine_after_ids(inj, t.host_tid, area, t.rec->confinement, who);
  }
  // A change of uid resets the dumpable flag (prctl(2)); the job's own value matters to
  // who may read its /proc files and attach to it.
  p.leader().call_ok(fmt::format("process {}: prctl(PR_SET_DUMPABLE)", r.pid), SYS_prctl,
                     PR_SET_DUMPABLE, static_cast<std::uint64_t>(r.dumpable));
}

}  // namespace fsched::ckpt
