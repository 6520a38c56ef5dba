// Process-control attributes (procattr.h). Scheduling attributes and oom_score_adj are
// read and set by the engine directly (it is root: sched_setattr(2) of any task needs
// CAP_SYS_NICE, which it has); the prctl(2) and membarrier(2) ones only exist for the
// calling task, so they are read and set by injected syscalls in each thread.
#include "ckpt/procattr.h"

#include <fcntl.h>
#include <linux/membarrier.h>
#include <linux/sched.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "ckpt/inject.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

// struct sched_attr of sched_setattr(2) (linux/sched/types.h, which clashes with glibc's
// <sched.h>; glibc 2.36 does not declare it).
struct sched_attr {
  std::uint32_t size;
  std::uint32_t sched_policy;
  std::uint64_t sched_flags;
  std::int32_t sched_nice;
  std::uint32_t sched_priority;
  std::uint64_t sched_runtime, sched_deadline, sched_period;
  std::uint32_t sched_util_min, sched_util_max;
};

// Kernel 6.3 (not in Debian 12's headers): the mask of MEMBARRIER_CMD_REGISTER_* commands
// the calling process has issued.
constexpr long kMembarrierGetRegistrations = 1 << 9;
constexpr std::uint64_t kMembarrierRegisters = MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED |
                                               MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED |
                                               MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_SYNC_CORE |
                                               MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED_RSEQ;

sched_attr get_sched(pid_t tid) {
  sched_attr a{};
  if (::syscall(SYS_sched_getattr, tid, &a, sizeof a, 0) < 0)
    fail_errno("thread {}: sched_getattr", tid);
  return a;
}

SchedAttr to_record(const sched_attr& a) {
  SchedAttr s;
  s.policy = a.sched_policy;
  s.flags = a.sched_flags & SCHED_FLAG_RESET_ON_FORK;
  s.nice = a.sched_nice;
  s.priority = a.sched_priority;
  s.runtime = a.sched_runtime;
  s.deadline = a.sched_deadline;
  s.period = a.sched_period;
  s.util_min = a.sched_util_min;
  s.util_max = a.sched_util_max;
  return s;
}

std::string describe(const SchedAttr& s) {
  return fmt::format("policy {} flags {:#x} nice {} priority {} util {}-{}", s.policy, s.flags,
                     s.nice, s.priority, s.util_min, s.util_max);
}

void set_sched(pid_t tid, const SchedAttr& s, const std::string& who) {
  SchedAttr cur = to_record(get_sched(tid));
  if (cur == s) return;
  // A policy outside the fair class (SCHED_IDLE, the real-time ones, SCHED_DEADLINE) keeps
  // the nice value the thread had, which returns with SCHED_OTHER: set that first.
  if (s.policy != SCHED_OTHER && s.policy != SCHED_BATCH && cur.nice != s.nice) {
    sched_attr n{};
    n.size = sizeof n;
    n.sched_policy = SCHED_OTHER;
    n.sched_nice = s.nice;
    if (::syscall(SYS_sched_setattr, tid, &n, 0) < 0)
      fail_errno("{}: sched_setattr(SCHED_OTHER, nice {})", who, s.nice);
  }
  sched_attr a{};
  a.size = sizeof a;
  a.sched_policy = s.policy;
  a.sched_flags = s.flags & SCHED_FLAG_RESET_ON_FORK;
  a.sched_nice = s.nice;
  a.sched_priority = s.priority;
  a.sched_runtime = s.runtime;
  a.sched_deadline = s.deadline;
  a.sched_period = s.period;
  // Clamps only when they differ: a kernel without CONFIG_UCLAMP_TASK reports 0-0 and
  // refuses SCHED_FLAG_UTIL_CLAMP.
  if (s.util_min != cur.util_min || s.util_max != cur.util_max) {
    a.sched_flags |= SCHED_FLAG_UTIL_CLAMP;
    a.sched_util_min = s.util_min;
    a.sched_util_max = s.util_max;
  }
  if (::syscall(SYS_sched_setattr, tid, &a, 0) < 0)
    fail_errno("{}: sched_setattr({})", who, describe(s));
  SchedAttr now = to_record(get_sched(tid));
  if (now != s)
    fail("{}: scheduling set to {}, the kernel kept {}", who, describe(s), describe(now));
}

int read_oom_score_adj(pid_t pid) {
  return static_cast<int>(std::stol(read_file(fmt::format("/proc/{}/oom_score_adj", pid))));
}

void set_oom_score_adj(pid_t pid, int v, const std::string& who) {
  if (read_oom_score_adj(pid) == v) return;
  std::string path = fmt::format("/proc/{}/oom_score_adj", pid);
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!fd) fail_errno("{}: open {}", who, path);
  std::string text = std::to_string(v);
  if (::write(fd.get(), text.data(), text.size()) != static_cast<ssize_t>(text.size()))
    // Lowering it below what the node's processes get needs CAP_SYS_RESOURCE, which this
    // engine does not have (docs/security.md).
    fail_errno("{}: cannot set oom_score_adj to {} (lowering it needs CAP_SYS_RESOURCE)", who, v);
  if (int now = read_oom_score_adj(pid); now != v)
    fail("{}: oom_score_adj set to {}, the kernel kept {}", who, v, now);
}

// An int the injected prctl(option, &int) wrote at `addr` of process `pid`.
int prctl_int(Injector& inj, pid_t pid, std::uint64_t addr, int option, const std::string& what) {
  int v = 0;
  remote_write(pid, addr, &v, sizeof v);
  inj.call_ok(what, SYS_prctl, static_cast<std::uint64_t>(option), addr);
  remote_read(pid, addr, &v, sizeof v);
  return v;
}

}  // namespace

void dump_thread_attrs(pid_t pid, pid_t tid, Injector& inj, std::uint64_t scratch, Thread& t) {
  std::string who = fmt::format("thread {}", tid);
  t.sched = to_record(get_sched(tid));
  t.timerslack_ns = static_cast<std::uint64_t>(
      inj.call_ok(who + ": prctl(PR_GET_TIMERSLACK)", SYS_prctl, PR_GET_TIMERSLACK));
  t.pdeath_signal =
      prctl_int(inj, pid, scratch, PR_GET_PDEATHSIG, who + ": prctl(PR_GET_PDEATHSIG)");
}

void dump_process_ctl(DumpProcess& p) {
  Process& r = p.rec;
  std::string who = fmt::format("process {}", p.host_pid);
  r.child_subreaper = prctl_int(*p.inj, p.host_pid, p.scratch, PR_GET_CHILD_SUBREAPER,
                                who + ": prctl(PR_GET_CHILD_SUBREAPER)") != 0;
  r.thp_disable = static_cast<int>(
      p.inj->call_ok(who + ": prctl(PR_GET_THP_DISABLE)", SYS_prctl, PR_GET_THP_DISABLE));
  long m = p.inj->call(SYS_membarrier, kMembarrierGetRegistrations, 0, 0);
  // Kernels before 6.3 cannot say; none of the machines fsched supports is one.
  if (m == -EINVAL) fail_unsupported("{}: this kernel cannot report membarrier registrations", who);
  if (m < 0) throw Error(who + ": membarrier(GET_REGISTRATIONS)", static_cast<int>(-m));
  if (static_cast<std::uint64_t>(m) & ~kMembarrierRegisters)
    fail_unsupported("{}: membarrier registrations {:#x} include kinds this engine cannot restore",
                     who, m);
  r.membarrier = static_cast<std::uint64_t>(m);
  r.oom_score_adj = read_oom_score_adj(p.host_pid);
  r.procattr = true;
}

void restore_process_ctl(RestoreProcess& p, const InjectionArea& area) {
  const Process& r = *p.rec;
  if (!r.procattr) return;  // an image of an engine that did not record them
  std::string who = fmt::format("process {}", r.pid);
  Injector& leader = p.leader();
  if (r.oom_score_adj < -1000 || r.oom_score_adj > 1000)
    fail_image("image: process {}: oom_score_adj {} out of range", r.pid, r.oom_score_adj);
  set_oom_score_adj(p.host_pid, r.oom_score_adj, who);
  if (r.child_subreaper) {
    leader.call_ok(who + ": prctl(PR_SET_CHILD_SUBREAPER)", SYS_prctl, PR_SET_CHILD_SUBREAPER, 1);
    if (!prctl_int(leader, p.host_pid, area.data(), PR_GET_CHILD_SUBREAPER,
                   who + ": prctl(PR_GET_CHILD_SUBREAPER)"))
      fail("{}: the child-subreaper flag did not stay set", who);
  }
  if (r.thp_disable != 0) {
    // The value PR_GET_THP_DISABLE returns: bit 0 set, flags (such as
    // PR_THP_DISABLE_EXCEPT_ADVISED) shifted left by one.
    leader.call_ok(who + ": prctl(PR_SET_THP_DISABLE)", SYS_prctl, PR_SET_THP_DISABLE, 1,
                   static_cast<std::uint64_t>(r.thp_disable >> 1));
    long now = leader.call_ok(who + ": prctl(PR_GET_THP_DISABLE)", SYS_prctl, PR_GET_THP_DISABLE);
    if (now != r.thp_disable)
      fail("{}: THP disable set to {}, the kernel kept {}", who, r.thp_disable, now);
  }
  if (r.membarrier & ~kMembarrierRegisters)
    fail_image("image: process {}: unknown membarrier registrations {:#x}", r.pid, r.membarrier);
  for (std::uint64_t bit = 1; bit <= r.membarrier; bit <<= 1)
    if (r.membarrier & bit)
      leader.call_ok(fmt::format("{}: membarrier(register {:#x})", who, bit), SYS_membarrier, bit,
                     0, 0);
  for (auto& t : p.threads) {
    std::string twho = fmt::format("process {} thread {}", r.pid, t.rec->tid);
    set_sched(t.host_tid, t.rec->sched, twho);
    if (t.rec->timerslack_ns != 0) {
      t.inj->call_ok(twho + ": prctl(PR_SET_TIMERSLACK)", SYS_prctl, PR_SET_TIMERSLACK,
                     t.rec->timerslack_ns);
      auto now = static_cast<std::uint64_t>(
          t.inj->call_ok(twho + ": prctl(PR_GET_TIMERSLACK)", SYS_prctl, PR_GET_TIMERSLACK));
      if (now != t.rec->timerslack_ns)
        fail("{}: timer slack set to {} ns, the kernel kept {}", twho, t.rec->timerslack_ns, now);
    }
    if (t.rec->pdeath_signal < 0 || t.rec->pdeath_signal > 64)
      fail_image("image: {}: bad parent-death signal {}", twho, t.rec->pdeath_signal);
    if (t.rec->pdeath_signal != 0)
      t.inj->call_ok(twho + ": prctl(PR_SET_PDEATHSIG)", SYS_prctl, PR_SET_PDEATHSIG,
                     static_cast<std::uint64_t>(t.rec->pdeath_signal));
  }
}

}  // namespace fsched::ckpt
