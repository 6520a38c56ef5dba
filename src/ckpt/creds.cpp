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

#include <charconv>
#include <optional>
#include <sstream>
#include <string_view>

#include "ckpt/confine.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

const char* const kRlimitNames[] = {"CPU",      "FSIZE",  "DATA",    "STACK", "CORE",  "RSS",
                                    "NPROC",    "NOFILE", "MEMLOCK", "AS",    "LOCKS", "SIGPENDING",
                                    "MSGQUEUE", "NICE",   "RTPRIO",  "RTTIME"};

// The rows of /proc/PID/limits (fs/proc/base.c, proc_pid_limits), in RLIMIT_* order.
constexpr std::string_view kLimitsRows[] = {
    "Max cpu time",       "Max file size",     "Max data size",         "Max stack size",
    "Max core file size", "Max resident set",  "Max processes",         "Max open files",
    "Max locked memory",  "Max address space", "Max file locks",        "Max pending signals",
    "Max msgqueue size",  "Max nice priority", "Max realtime priority", "Max realtime timeout"};
static_assert(std::size(kLimitsRows) == RLIMIT_NLIMITS);

// The limits of process `pid` as /proc/PID/limits shows them: a header, then one row
// per limit, "%-25s %-20s %-20s %-10s" (name, soft, hard, units), each value a number
// or "unlimited". Nothing when the file does not read exactly so (another kernel's):
// the caller then asks the process itself.
std::optional<std::vector<Rlimit>> read_proc_limits(pid_t pid) {
  std::istringstream in(read_file(fmt::format("/proc/{}/limits", pid)));
  std::string line;
  if (!std::getline(in, line) || !line.starts_with("Limit ")) return std::nullopt;
  auto value = [](std::string_view field) -> std::optional<std::uint64_t> {
    while (!field.empty() && field.back() == ' ') field.remove_suffix(1);
    if (field == "unlimited") return RLIM64_INFINITY;
    std::uint64_t v = 0;
    auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), v);
    if (ec != std::errc() || end != field.data() + field.size() || field.empty())
      return std::nullopt;
    return v;
  };
  std::vector<Rlimit> out;
  for (int res = 0; res < RLIMIT_NLIMITS; ++res) {
    if (!std::getline(in, line) || line.size() < 67) return std::nullopt;
    std::string_view l(line);
    std::string_view name = l.substr(0, 25);
    while (!name.empty() && name.back() == ' ') name.remove_suffix(1);
    if (name != kLimitsRows[res] || l[25] != ' ' || l[46] != ' ') return std::nullopt;
    auto soft = value(l.substr(26, 20)), hard = value(l.substr(47, 20));
    if (!soft || !hard) return std::nullopt;
    out.push_back({res, *soft, *hard});
  }
  return out;
}

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
  // From /proc/PID/limits when it reads as expected: sixteen injected prlimit64 calls
  // cost the frozen job ~3 ms.
  if (std::optional<std::vector<Rlimit>> l = read_proc_limits(p.host_pid)) {
    r.rlimits = std::move(*l);
    return;
  }
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
