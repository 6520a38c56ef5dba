// POSIX timers (timer_create(2)): dump from /proc/PID/timers and timer_gettime(2) by
// injection; restore by timer_create(2) with PR_TIMER_CREATE_RESTORE_IDS and
// timer_settime(2), injected in the restored process. CRIU does the same
// (criu/proc_parse.c parse_posix_timers, criu/timer.c), with the ids restored by
// creating and deleting timers until the id comes up; the prctl makes that exact.
#include "ckpt/posix_timers.h"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>

#include <algorithm>
#include <cstring>
#include <sstream>

#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"

// linux/prctl.h of this machine's headers may predate Linux 6.13.
#ifndef PR_TIMER_CREATE_RESTORE_IDS
#define PR_TIMER_CREATE_RESTORE_IDS 77
#define PR_TIMER_CREATE_RESTORE_IDS_OFF 0
#define PR_TIMER_CREATE_RESTORE_IDS_ON 1
#define PR_TIMER_CREATE_RESTORE_IDS_GET 2
#endif

namespace fsched::ckpt {

namespace {

// The kernel's struct sigevent (include/uapi/asm-generic/siginfo.h): 64 bytes.
struct KernelSigevent {
  std::uint64_t value;
  int signo;
  int notify;
  int tid;  // SIGEV_THREAD_ID: sigev_notify_thread_id
  int pad[11];
};
static_assert(sizeof(KernelSigevent) == 64);

// The kernel's struct __kernel_itimerspec.
struct KernelItimerspec {
  std::int64_t interval_sec, interval_nsec, value_sec, value_nsec;
};

constexpr std::int64_t kNs = 1000000000;

// Clocks a restored timer can have: system-wide ones, and the CPU clocks of the
// process (or, single-threaded, its thread) itself, as glibc encodes them for pid 0
// (kernel/time/posix-cpu-timers.c: MAKE_PROCESS_CPUCLOCK(0, PROF|VIRT|SCHED) and
// MAKE_THREAD_CPUCLOCK(0, ...)). Alarm clocks need CAP_WAKE_ALARM, which the job
// need not have; another process's CPU clock names a host pid.
enum class ClockUse { kOk, kThreadCpu, kRefused };
ClockUse clock_use(int clock) {
  switch (clock) {
    case CLOCK_REALTIME:
    case CLOCK_MONOTONIC:
    case CLOCK_BOOTTIME:
    case CLOCK_TAI:
      return ClockUse::kOk;
    case -8:  // process CPU clocks: PROF, VIRT, SCHED (CLOCK_PROCESS_CPUTIME_ID)
    case -7:
    case -6:
      return ClockUse::kOk;
    case -4:  // thread CPU clocks (CLOCK_THREAD_CPUTIME_ID): of the thread that made it
    case -3:
    case -2:
      return ClockUse::kThreadCpu;
    default:
      return ClockUse::kRefused;
  }
}

// /proc/PID/timers, one record per timer (fs/proc/base.c show_timer):
//   ID: 1
//   signal: 34/00007ffd12345678
//   notify: signal/pid.123      (or signal/tid.124, none/pid.123, thread/...)
//   ClockID: 1
// The pid or tid is in the reader's PID namespace: the host's.
struct ProcTimer {
  int id = -1;
  int signo = 0;
  std::uint64_t value = 0;
  std::string notify;  // "signal", "none", "thread"
  bool to_thread = false;
  int host_tid = 0;
  int clock = 0;
};

std::vector<ProcTimer> parse_timers(const std::string& text, const std::string& who) {
  std::vector<ProcTimer> out;
  std::istringstream in(text);
  std::string key;
  while (in >> key) {
    if (key == "ID:") {
      out.emplace_back();
      in >> out.back().id;
    } else if (out.empty()) {
      throw Error(fmt::format("{}: /proc timers: \"{}\" before an ID", who, key));
    } else if (key == "signal:") {
      std::string v;
      in >> v;
      auto slash = v.find('/');
      if (slash == std::string::npos)
        throw Error(fmt::format("{}: /proc timers: signal \"{}\"", who, v));
      out.back().signo = std::stoi(v.substr(0, slash));
      out.back().value = std::stoull(v.substr(slash + 1), nullptr, 16);
    } else if (key == "notify:") {
      std::string v;
      in >> v;
      auto slash = v.find('/'), dot = v.find('.');
      if (slash == std::string::npos || dot == std::string::npos || dot < slash)
        throw Error(fmt::format("{}: /proc timers: notify \"{}\"", who, v));
      out.back().notify = v.substr(0, slash);
      out.back().to_thread = v.substr(slash + 1, dot - slash - 1) == "tid";
      out.back().host_tid = std::stoi(v.substr(dot + 1));
    } else if (key == "ClockID:") {
      in >> out.back().clock;
    } else {
      in.ignore(1 << 20, '\n');
    }
    if (!in) throw Error(fmt::format("{}: /proc timers: cannot parse \"{}\"", who, key));
  }
  for (auto& t : out)
    if (t.id < 0 || t.notify.empty())
      throw Error(fmt::format("{}: /proc timers: incomplete record", who));
  return out;
}

// siginfo_t of an SI_TIMER signal: si_code at 8, the kernel's timer id at 16.
constexpr int kSiTimer = -2;
int timer_of_siginfo(const std::string& hex) {
  auto b = from_hex(hex);
  if (b.size() < 24) return -1;
  int code = 0, id = -1;
  std::memcpy(&code, b.data() + 8, sizeof code);
  if (code != kSiTimer) return -1;
  std::memcpy(&id, b.data() + 16, sizeof id);
  return id;
}

// Moves the queued signals of timers out of `pending` into their timers.
void take_timer_signals(std::vector<std::string>& pending, std::vector<PosixTimer>& timers) {
  std::erase_if(pending, [&](const std::string& hex) {
    int id = timer_of_siginfo(hex);
    for (auto& t : timers)
      if (id >= 0 && t.id == id && t.notify != SIGEV_NONE) {
        t.signal_pending = true;
        return true;
      }
    return false;
  });
}

}  // namespace

void dump_posix_timers(DumpProcess& p) {
  const std::string who = fmt::format("process {} (pid {} in the job)", p.host_pid, p.rec.pid);
  p.rec.posix_timers.clear();
  std::string text;
  try {
    text = read_file(fmt::format("/proc/{}/timers", p.host_pid));
  } catch (const Error&) {
    return;  // kernels without CONFIG_CHECKPOINT_RESTORE have no such file: no timers then
  }
  auto timers = parse_timers(text, who);
  if (timers.empty()) return;
  // What the restore needs, checked now, on this kernel (the restore runs on one like it:
  // validate.cpp compares kernels).
  if (::prctl(PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_GET, 0, 0, 0) < 0)
    fail_unsupported(
        "{} uses POSIX timers (timer_create), which this kernel cannot restore with their ids "
        "(prctl PR_TIMER_CREATE_RESTORE_IDS, Linux 6.13)",
        who);
  for (auto& pt : timers) {
    const std::string what = fmt::format("{}: POSIX timer {}", who, pt.id);
    PosixTimer t;
    t.id = pt.id;
    t.clockid = pt.clock;
    switch (clock_use(pt.clock)) {
      case ClockUse::kOk:
        break;
      case ClockUse::kThreadCpu:
        if (p.host_tids.size() == 1) break;
        fail_unsupported(
            "{} counts the CPU time of the thread that made it (CLOCK_THREAD_CPUTIME_ID), in a "
            "process with {} threads: not supported (the kernel does not say which thread)",
            what, p.host_tids.size());
      case ClockUse::kRefused:
        fail_unsupported(
            "{} uses clock {} (an alarm clock or another process's CPU clock): not "
            "supported",
            what, pt.clock);
    }
    if (pt.notify == "none") {
      t.notify = SIGEV_NONE;
    } else if (pt.notify == "signal") {
      t.notify = pt.to_thread ? SIGEV_THREAD_ID : SIGEV_SIGNAL;
      t.signo = pt.signo;
      t.sigval = pt.value;
      if (pt.to_thread) {
        auto it = std::find(p.host_tids.begin(), p.host_tids.end(), pt.host_tid);
        if (it == p.host_tids.end() || p.rec.threads.size() != p.host_tids.size())
          fail_unsupported("{} signals thread {}, not a thread of the process: not supported", what,
                           pt.host_tid);
        t.tid = p.rec.threads[static_cast<std::size_t>(it - p.host_tids.begin())].tid;
      } else if (pt.host_tid != p.host_pid) {
        fail_unsupported("{} signals process {}, not the process itself: not supported", what,
                         pt.host_tid);
      }
    } else {
      fail_unsupported("{}: notification \"{}\" not supported", what, pt.notify);
    }
    p.inj->call_ok(what + ": timer_gettime", SYS_timer_gettime, static_cast<std::uint64_t>(pt.id),
                   p.scratch);
    KernelItimerspec its{};
    remote_read(p.host_pid, p.scratch, &its, sizeof its);
    t.value_ns = its.value_sec * kNs + its.value_nsec;
    t.interval_ns = its.interval_sec * kNs + its.interval_nsec;
    p.rec.posix_timers.push_back(t);
  }
  take_timer_signals(p.rec.shared_pending_hex, p.rec.posix_timers);
  for (auto& th : p.rec.threads) take_timer_signals(th.pending_hex, p.rec.posix_timers);
}

void restore_posix_timers(RestoreProcess& p, const InjectionArea& area) {
  const auto& timers = p.rec->posix_timers;
  if (timers.empty()) return;
  const std::string who = fmt::format("process {}", p.rec->pid);
  Injector& inj = p.leader();
  inj.call_ok(who + ": prctl(PR_TIMER_CREATE_RESTORE_IDS)", SYS_prctl, PR_TIMER_CREATE_RESTORE_IDS,
              PR_TIMER_CREATE_RESTORE_IDS_ON);
  const std::uint64_t id_addr = area.data(), ev_addr = area.data() + 64,
                      its_addr = area.data() + 128;
  for (const auto& t : timers) {
    const std::string what = fmt::format("{}: POSIX timer {}", who, t.id);
    KernelSigevent ev{};
    ev.value = t.sigval;
    ev.signo = t.signo;
    ev.notify = t.notify;
    ev.tid = t.tid;
    int id = t.id;
    remote_write(p.host_pid, ev_addr, &ev, sizeof ev);
    remote_write(p.host_pid, id_addr, &id, sizeof id);
    inj.call_ok(what + ": timer_create", SYS_timer_create,
                static_cast<std::uint64_t>(static_cast<std::int64_t>(t.clockid)), ev_addr, id_addr);
    remote_read(p.host_pid, id_addr, &id, sizeof id);
    if (id != t.id) throw Error(fmt::format("{}: timer_create gave id {}", what, id));
    // Time left, relative; a queued signal is queued again by the timer itself.
    std::int64_t value = t.value_ns;
    if (t.signal_pending && value <= 0) value = 1;
    if (value > 0) {
      KernelItimerspec its{t.interval_ns / kNs, t.interval_ns % kNs, value / kNs, value % kNs};
      remote_write(p.host_pid, its_addr, &its, sizeof its);
      inj.call_ok(what + ": timer_settime", SYS_timer_settime, static_cast<std::uint64_t>(t.id), 0,
                  its_addr, 0);
    }
    // Read back: the interval exactly, armed or not as it was (the time left may have
    // run on, or out for a timer set to fire at once).
    inj.call_ok(what + ": timer_gettime", SYS_timer_gettime, static_cast<std::uint64_t>(t.id),
                its_addr);
    KernelItimerspec got{};
    remote_read(p.host_pid, its_addr, &got, sizeof got);
    const std::int64_t got_interval = got.interval_sec * kNs + got.interval_nsec;
    const std::int64_t got_value = got.value_sec * kNs + got.value_nsec;
    if ((value > 0 && got_interval != t.interval_ns) ||
        got_value > std::max(value, t.interval_ns) || (value == 0 && got_value != 0))
      throw Error(fmt::format("{}: set to {} ns left, {} ns interval; reads back {} ns, {} ns",
                              what, value, t.interval_ns, got_value, got_interval));
  }
  inj.call_ok(who + ": prctl(PR_TIMER_CREATE_RESTORE_IDS off)", SYS_prctl,
              PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF);
}

}  // namespace fsched::ckpt
