// Process tree: freezing the job's tree for dump, and recreating it with the saved
// PIDs, sessions and process groups on restore (clone3(2) with set_tid).
#include "ckpt/pstree.h"

#include <linux/sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstring>
#include <deque>
#include <filesystem>
#include <set>

#include "ckpt/confine.h"
#include "ckpt/namespaces.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "ckpt/tty.h"
#include "common/error.h"

namespace fsched::ckpt {

static int ns_pid_of(pid_t host_pid, pid_t host_tid = 0) {
  auto st = read_status(host_tid ? host_tid : host_pid);
  auto v = parse_ints(st["NSpid"]);
  if (v.empty()) fail("no NSpid in /proc/{}/status", host_tid ? host_tid : host_pid);
  return static_cast<int>(v.back());
}

void check_job_root(pid_t pid) {
  if (pid <= 0) fail_usage("invalid PID {}", pid);
  if (::kill(pid, 0) < 0 && errno == ESRCH) fail_usage("no process with PID {}", pid);
  auto st = read_status(pid);
  auto ns = parse_ints(st["NSpid"]);
  std::string exe;
  try {
    exe = read_link(fmt::format("/proc/{}/exe", pid));
  } catch (const Error&) {
  }
  if (ns.size() < 2 || ns.back() != 1 ||
      std::filesystem::path(exe).filename().string().rfind("fsched-init", 0) != 0)
    fail_usage(
        "PID {} is not a job started by fsched-ckpt run (expected the init of its PID namespace)",
        pid);
}

// ---- freeze -----------------------------------------------------------------------

// A task the kernel is tearing down: a zombie or dead thread, or PF_EXITING (0x4) in
// the flags of /proc/TID/stat (proc(5)); also true if it is already gone.
static bool task_exiting(pid_t tid) {
  try {
    auto f = read_stat(tid);
    unsigned long flags = std::stoul(f.at(9));
    return f[3] == "Z" || f[3] == "X" || (flags & 0x4) != 0;
  } catch (const std::exception&) {
    return true;
  }
}

static bool task_exists(pid_t pid, pid_t tid) {
  return ::access(fmt::format("/proc/{}/task/{}", pid, tid).c_str(), F_OK) == 0;
}

// Waits, at most kFreezeWait, for the interrupt stops of freshly seized tasks. A
// signal that was being delivered is let through first (its handler frame is set up)
// so that none is lost. Returns the tasks that exited instead of stopping. Throws
// FreezeBusy for a task that does not stop in time: a parent in vfork(2) cannot stop
// until its (already frozen) child has called exec.
static constexpr auto kFreezeWait = std::chrono::seconds(2);

// A task already in a job-control stop reports it as its PTRACE_EVENT_STOP with the
// stop signal (a PTRACE_INTERRUPT trap says SIGTRAP, ptrace(2) "group-stop"): that
// signal is put in `stopped`.
static std::set<pid_t> wait_frozen(const std::vector<pid_t>& tids, std::map<pid_t, int>& stopped) {
  std::set<pid_t> pending(tids.begin(), tids.end()), exited;
  auto deadline = std::chrono::steady_clock::now() + kFreezeWait;
  while (!pending.empty()) {
    for (auto it = pending.begin(); it != pending.end();) {
      int st = 0;
      pid_t r = ::waitpid(*it, &st, __WALL | WNOHANG);
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) fail_errno("waitpid on thread {}", *it);
      if (r == 0) {
        ++it;
        continue;
      }
      if (WIFEXITED(st) || WIFSIGNALED(st)) {
        exited.insert(*it);
        it = pending.erase(it);
        continue;
      }
      int event = st >> 16, sig = WSTOPSIG(st);
      if (event == PTRACE_EVENT_STOP) {
        if (sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU)
          stopped[*it] = sig;
        it = pending.erase(it);
      } else if (event == 0 && sig != (SIGTRAP | 0x80)) {
        if (::ptrace(PTRACE_CONT, *it, nullptr, reinterpret_cast<void*>(uintptr_t(sig))) < 0)
          fail_errno("ptrace(CONT) on thread {}", *it);
        ++it;
      } else {
        fail("thread {}: unexpected stop {:#x} while freezing", *it, st);
      }
    }
    if (pending.empty()) break;
    if (std::chrono::steady_clock::now() > deadline)
      throw FreezeBusy(
          fmt::format("thread {} did not stop within {} s (a parent waiting in vfork, or "
                      "an uninterruptible sleep)",
                      *pending.begin(), kFreezeWait.count()));
    ::usleep(200);
  }
  return exited;
}

FrozenTree::FrozenTree(pid_t root) : root_(root) {
  std::set<pid_t> seized;
  std::set<pid_t> known;
  std::map<pid_t, int> stopped;  // task -> the job-control stop it was found in
  std::vector<pid_t> order;      // processes, breadth first
  order.push_back(root);
  known.insert(root);
  // Tasks are recorded before waiting so that the destructor detaches them on error.
  auto proc_of = [&](pid_t pid) -> DumpProcess& {
    for (auto& p : procs_)
      if (p.host_pid == pid) return p;
    procs_.push_back(DumpProcess{});
    procs_.back().host_pid = pid;
    return procs_.back();
  };
  try {
    for (bool changed = true; changed;) {
      changed = false;
      std::vector<pid_t> fresh;
      for (std::size_t i = 0; i < order.size(); ++i) {
        pid_t pid = order[i];
        std::vector<pid_t> tids;
        try {
          // A zombie has no thread to stop and no child; it is recreated as one.
          if (read_stat(pid)[3] == "Z") {
            proc_of(pid).zombie = true;
            continue;
          }
          tids = list_tasks(pid);
        } catch (const Error&) {
          continue;  // exited before we got to it
        }
        auto& dp = proc_of(pid);
        // The leader first, whatever the order of the directory.
        std::stable_partition(tids.begin(), tids.end(), [&](pid_t t) { return t == pid; });
        for (pid_t tid : tids) {
          if (seized.count(tid)) continue;
          try {
            seize_and_interrupt(tid, kSeizeOptions);
          } catch (const Error& e) {
            if (!task_exists(pid, tid)) continue;  // exited meanwhile
            // ptrace(2) refuses (EPERM) a task that is exiting; it is gone in a moment
            // (a short-lived child of make or git): thaw and try again.
            if (e.err() == EPERM && task_exiting(tid))
              throw FreezeBusy(fmt::format("thread {} was exiting while being seized", tid));
            throw;
          }
          seized.insert(tid);
          dp.host_tids.push_back(tid);
          fresh.push_back(tid);
          changed = true;
        }
        if (dp.host_tids.size() > 1) std::sort(dp.host_tids.begin() + 1, dp.host_tids.end());
        std::vector<pid_t> kids;
        try {
          kids = list_children(pid);
        } catch (const Error&) {
          // It exited after its threads were seized (a short-lived child of make or
          // git): its children, if any, are its reaper's now, found through it.
          if (task_exists(pid, pid) && !task_exiting(pid)) throw;
          changed = true;
          continue;
        }
        for (pid_t c : kids)
          if (known.insert(c).second) {
            order.push_back(c);
            changed = true;
          }
      }
      // Tasks that exited between seize and stop: their process may now be a zombie,
      // or gone; the next round looks again.
      auto exited = wait_frozen(fresh, stopped);
      if (!exited.empty()) {
        changed = true;
        for (auto& p : procs_) {
          std::erase_if(p.host_tids, [&](pid_t t) { return exited.count(t) != 0; });
          if (p.host_tids.empty() || p.host_tids.front() != p.host_pid) {
            std::erase_if(p.host_tids, [&](pid_t t) {
              ::ptrace(PTRACE_DETACH, t, nullptr, nullptr);
              return true;
            });
            p.zombie = false;  // re-examined next round
          }
        }
      }
    }
    // Everything is stopped now: a zombie seen before its parent stopped may have been
    // reaped meanwhile.
    for (auto& p : procs_)
      if (p.zombie) {
        try {
          p.zombie = read_stat(p.host_pid)[3] == "Z";
        } catch (const Error&) {
          p.zombie = false;
        }
      }
  } catch (...) {
    thaw();
    throw;
  }
  // A stop is the whole thread group's (signal(7), "job control"): any task tells.
  for (auto& p : procs_)
    for (pid_t t : p.host_tids)
      if (auto it = stopped.find(t); it != stopped.end()) p.stop_signal = it->second;
  // procs_ follows discovery order, which is breadth first; drop processes that
  // vanished before any thread was seized.
  std::erase_if(procs_, [](const DumpProcess& p) { return p.host_tids.empty() && !p.zombie; });
  for (auto& p : procs_)
    if (!p.zombie && p.host_tids.front() != p.host_pid)
      fail_unsupported("process {}: its thread-group leader has exited (unsupported)", p.host_pid);
}

FrozenTree::~FrozenTree() { thaw(); }

// Detaches a seized task. One that has not reached its stop yet (a parent in vfork
// waits for its child, detached just before) cannot be detached until it stops.
static void detach_task(pid_t tid) {
  if (::ptrace(PTRACE_DETACH, tid, nullptr, nullptr) == 0 || errno != ESRCH) return;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < deadline) {
    int st = 0;
    pid_t r = ::waitpid(tid, &st, __WALL | WNOHANG);
    if (r < 0 || (r > 0 && (WIFEXITED(st) || WIFSIGNALED(st)))) return;
    if (r > 0) {
      // Give back a signal caught at its delivery; an interrupt stop carries none.
      int sig = (st >> 16) == 0 && WSTOPSIG(st) != (SIGTRAP | 0x80) ? WSTOPSIG(st) : 0;
      ::ptrace(PTRACE_DETACH, tid, nullptr, reinterpret_cast<void*>(uintptr_t(sig)));
      return;
    }
    ::usleep(500);
  }
}

void FrozenTree::thaw() {
  if (done_) return;
  done_ = true;
  for (auto& p : procs_) {
    if (p.inj) {
      try {
        close_injection(p);
      } catch (...) {
      }
    }
  }
  // Children before parents: a vfork parent stops only after its child has run on.
  for (auto p = procs_.rbegin(); p != procs_.rend(); ++p)
    for (pid_t tid : p->host_tids) detach_task(tid);
}

void FrozenTree::kill(const std::function<void()>& killed) {
  if (done_) return;
  done_ = true;
  ::kill(root_, SIGKILL);
  if (killed) killed();
  // Collect the exit of every task as its tracer, children and threads before their
  // parents: a dying init waits until its namespace is empty, and a traced zombie
  // leaves only once its tracer has seen it.
  for (auto p = procs_.rbegin(); p != procs_.rend(); ++p)
    for (auto t = p->host_tids.rbegin(); t != p->host_tids.rend(); ++t) {
      int st;
      while (::waitpid(*t, &st, __WALL) > 0 && !WIFEXITED(st) && !WIFSIGNALED(st)) {
      }
    }
}

void dump_ids(DumpProcess& p) {
  auto st = read_status(p.host_pid);
  auto stat = read_stat(p.host_pid);
  p.rec.pid = ns_pid_of(p.host_pid);
  auto ns_of = [&](const char* key) {
    auto v = parse_ints(st[key]);
    if (v.empty()) fail("no {} in /proc/{}/status", key, p.host_pid);
    return static_cast<int>(v.back());
  };
  p.rec.pgid = ns_of("NSpgid");
  p.rec.sid = ns_of("NSsid");
  if (p.rec.pid == 1) {
    p.rec.ppid = 0;
  } else {
    pid_t host_ppid = static_cast<pid_t>(std::stoll(stat[4]));
    p.rec.ppid = ns_pid_of(host_ppid);
  }
  p.rec.exit_signal = std::stoi(stat[38]);
  p.rec.zombie = p.zombie;
  p.rec.stop_signal = p.stop_signal;
  if (p.zombie) {
    p.rec.exit_status = std::stoi(stat.at(52));
    // The core-dump flag of its status comes from a core dump that happened: a restore
    // cannot make one happen again, so the status could not be given back exactly.
    if (WCOREDUMP(p.rec.exit_status))
      fail_unsupported(
          "process {} (pid {} in the job): a zombie that died by signal {} with a core dump "
          "(its wait status cannot be reproduced): not supported",
          p.host_pid, p.rec.pid, WTERMSIG(p.rec.exit_status));
  }
  if (p.rec.sid == 0 || p.rec.pgid == 0)
    fail_unsupported("process {} belongs to a session or process group outside the job", p.rec.pid);
  p.rec.threads.clear();
  for (pid_t tid : p.host_tids) {
    Thread t;
    t.tid = ns_pid_of(p.host_pid, tid);
    p.rec.threads.push_back(std::move(t));
  }
}

// ---- injection during dump ------------------------------------------------------

void open_injection(DumpProcess& p) {
  for (auto& m : read_maps(p.host_pid))
    if (m.path == "[vdso]") p.heal = install_heal_code(p.host_pid, m.start, m.end);
  if (!p.heal.entry)
    fail_unsupported("process {}: it has no vDSO to inject system calls through", p.host_pid);
  p.inj = std::make_unique<Injector>(p.host_pid, p.heal);
  long r = p.inj->call_ok("mmap of the dump scratch area", SYS_mmap, 0, kScratchBytes,
                          PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1ULL, 0);
  p.scratch = static_cast<std::uint64_t>(r);
}

TermSignalsBlocked::TermSignalsBlocked() {
  sigset_t term;
  sigemptyset(&term);
  for (int s : {SIGINT, SIGTERM, SIGHUP, SIGQUIT}) sigaddset(&term, s);
  ::sigprocmask(SIG_BLOCK, &term, &old_);
}

TermSignalsBlocked::~TermSignalsBlocked() { ::sigprocmask(SIG_SETMASK, &old_, nullptr); }

void close_injection(DumpProcess& p) {
  if (!p.inj) return;
  if (p.scratch) {
    p.inj->call(SYS_munmap, p.scratch, kScratchBytes);
    p.scratch = 0;
  }
  p.inj->restore();
  p.inj.reset();
}

// ---- restore: build the tree -------------------------------------------------------

static bool overlaps(std::uint64_t a, std::uint64_t b, std::uint64_t s, std::uint64_t e) {
  return a < e && s < b;
}

static std::uint64_t choose_area(const Manifest& m) {
  auto own = read_maps(::getpid());
  for (std::uint64_t cand = 0x7e0000000000ULL; cand > 0x100000000ULL; cand -= (1ULL << 32)) {
    std::uint64_t end = cand + kInjectionAreaBytes;
    bool clash = false;
    for (auto& p : m.processes)
      for (auto& v : p.vmas) clash = clash || overlaps(cand, end, v.start, v.end);
    for (auto& v : own) clash = clash || overlaps(cand, end, v.start, v.end);
    if (!clash) return cand;
  }
  fail("no free address range for the restorer's injection area");
}

// Body of the first helper, pid 1 of the new namespace: only raw syscalls, since it
// is a clone of a multi-threaded process.
[[noreturn]] static void helper_init_main() {
  ::syscall(SYS_close_range, 0U, ~0U, 0U);
  // The job's own /proc (namespaces.h); the restorer reads a failure from the exit code.
  if (long e = enter_job_mount_namespace(); e < 0) ::syscall(SYS_exit_group, -e);
  ::syscall(SYS_setsid);
  for (;;) ::syscall(SYS_pause);
}

// Ends a helper the way the saved zombie ended: exit_group(2) with its code, or death
// by its signal (default action, no core file), leaving a zombie for its parent.
static void make_zombie(RestoreProcess& p, const InjectionArea& area) {
  const Process& rec = *p.rec;
  Injector& inj = p.leader();
  pid_t tid = p.host_pid;
  int status = rec.exit_status;
  std::string who = fmt::format("zombie {}", rec.pid);
  if (WIFSIGNALED(status)) {
    int sig = WTERMSIG(status);
    // SIGKILL and SIGSTOP have no disposition to set (rt_sigaction(2): EINVAL).
    if (sig != SIGKILL && sig != SIGSTOP) {
      std::uint64_t dfl[4] = {0, 0, 0, 0};  // kernel struct sigaction: SIG_DFL
      remote_write(tid, area.data(), dfl, sizeof dfl);
      inj.call_ok(who + ": rt_sigaction", SYS_rt_sigaction, static_cast<std::uint64_t>(sig),
                  area.data(), 0, 8);
    }
    // 1, not 0: a core_pattern pipe ignores a limit of 0 but not 1 (core(5)), and a
    // file core needs more than one byte.
    std::uint64_t nocore[2] = {1, 1};
    remote_write(tid, area.data(), nocore, sizeof nocore);
    inj.call_ok(who + ": prlimit(RLIMIT_CORE)", SYS_prlimit64, 0, RLIMIT_CORE, area.data(), 0);
    set_sigmask(tid, 0);
    if (sig == SIGKILL) {
      // Acts at once, even on a traced task: an injected kill(2) would never return.
      if (::kill(tid, SIGKILL) < 0) fail_errno("{}: kill", who);
    } else {
      inj.call_ok(who + ": kill", SYS_kill, static_cast<std::uint64_t>(rec.pid),
                  static_cast<std::uint64_t>(sig));
      if (::ptrace(PTRACE_CONT, tid, nullptr, nullptr) < 0) fail_errno("{}: ptrace(CONT)", who);
    }
    int st = 0;
    for (;;) {
      if (::waitpid(tid, &st, __WALL) < 0) fail_errno("{}: waitpid", who);
      if (WIFSIGNALED(st) || WIFEXITED(st)) break;
      int s = WIFSTOPPED(st) ? WSTOPSIG(st) : 0;
      // Let the signal through at its delivery stop; other stops just continue.
      ::ptrace(PTRACE_CONT, tid, nullptr, reinterpret_cast<void*>(uintptr_t(s == sig ? sig : 0)));
    }
  } else {
    user_regs_struct r = inj.saved_regs();
    r.rip = area.code();
    r.rax = SYS_exit_group;
    r.orig_rax = static_cast<unsigned long long>(-1);
    r.rdi = static_cast<unsigned long long>(WEXITSTATUS(status));
    set_regs(tid, r);
    if (::ptrace(PTRACE_CONT, tid, nullptr, nullptr) < 0) fail_errno("{}: ptrace(CONT)", who);
    int st = 0;
    while (::waitpid(tid, &st, __WALL) >= 0 && !WIFEXITED(st) && !WIFSIGNALED(st))
      ::ptrace(PTRACE_CONT, tid, nullptr, nullptr);
  }
  inj.abandon();  // the task is gone: nothing to put back
  p.threads[0].inj.reset();
}

// SUSPEND_SECCOMP: the job's filters are installed before the last injected syscalls
// (confine.h) and act once the job is released.
static constexpr unsigned kRestoreOptions = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK |
                                            PTRACE_O_TRACECLONE | PTRACE_O_EXITKILL |
                                            kSuspendSeccomp;

void create_tree(const Manifest& m, InjectionArea& area, std::vector<RestoreProcess>& procs) {
  if (m.processes.empty() || m.processes[0].pid != 1)
    fail_image("image: the first process is not pid 1");
  area.addr = choose_area(m);
  area.size = kInjectionAreaBytes;
  procs.clear();
  procs.reserve(m.processes.size());

  clone_args ca{};
  // The namespaces `fsched-ckpt run` gives a job (namespaces.h).
  ca.flags = kJobNamespaces;
  ca.exit_signal = SIGCHLD;
  long child = ::syscall(SYS_clone3, &ca, sizeof ca);
  if (child < 0)
    fail_errno("clone3(CLONE_NEWPID | CLONE_NEWIPC | CLONE_NEWNS) for the restored init");
  if (child == 0) helper_init_main();

  RestoreProcess init;
  init.image = &m;
  init.rec = &m.processes[0];
  init.host_pid = static_cast<pid_t>(child);
  RestoreThread it;
  it.rec = &m.processes[0].threads.at(0);
  it.host_tid = init.host_pid;
  init.threads.push_back(std::move(it));
  procs.push_back(std::move(init));
  // Attach only once the helper has become a session leader with no fds: after that
  // it only sleeps, so wherever the interrupt stops it, its setup is complete.
  for (int i = 0;; ++i) {
    int st = 0;
    if (::waitpid(procs[0].host_pid, &st, WNOHANG) == procs[0].host_pid) {
      procs.clear();  // reaped: nothing left to kill
      if (WIFEXITED(st))
        fail("the restored init could not mount the job's own /proc: {}",
             std::strerror(WEXITSTATUS(st)));
      fail("the restored init died at its start (wait status {:#x})", st);
    }
    auto stat = read_stat(procs[0].host_pid);
    if (std::stoll(stat[6]) == procs[0].host_pid) break;
    if (i > 5000) fail("restore helper {} did not start", procs[0].host_pid);
    ::usleep(200);
  }
  seize_and_interrupt(procs[0].host_pid, kRestoreOptions);
  wait_for_stop(procs[0].host_pid);
  procs[0].threads[0].inj = std::make_unique<Injector>(procs[0].host_pid, local_syscall_gadget());
  Injector& i0 = procs[0].leader();

  // The helper inherited the restorer's rseq registration, whose area is about to be
  // unmapped: unregister it (rseq(2), RSEQ_FLAG_UNREGISTER).
  __ptrace_rseq_configuration rc{};
  if (::ptrace(static_cast<__ptrace_request>(PTRACE_GET_RSEQ_CONFIGURATION), procs[0].host_pid,
               reinterpret_cast<void*>(sizeof rc), &rc) > 0 &&
      rc.rseq_abi_size)
    i0.call_ok("rseq unregister", SYS_rseq, rc.rseq_abi_pointer, rc.rseq_abi_size, 1, rc.signature);

  i0.call_ok("mmap of the injection area", SYS_mmap, area.addr, area.size,
             PROT_READ | PROT_WRITE | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE,
             -1ULL, 0);
  const unsigned char code[] = {0x0f, 0x05, 0xcc};  // syscall; int3
  remote_write(procs[0].host_pid, area.code(), code, sizeof code);
  i0.set_syscall_ip(area.code());

  // Every pty before any session leader needs its terminal (tty.h).
  create_ptys(procs[0], area);
  std::map<int, std::size_t> by_pid;
  by_pid[1] = 0;
  for (std::size_t i = 1; i < m.processes.size(); ++i) {
    const Process& rec = m.processes[i];
    auto pit = by_pid.find(rec.ppid);
    if (pit == by_pid.end())
      fail_image("image: process {} comes before its parent {}", rec.pid, rec.ppid);
    RestoreProcess& parent = procs[pit->second];
    pid_t tid_arg = rec.pid;
    remote_write(parent.host_pid, area.data(), &tid_arg, sizeof tid_arg);
    clone_args args{};
    args.exit_signal = static_cast<std::uint64_t>(rec.exit_signal);
    // One fd table with its parent, as the dump found it (files.cpp).
    if (rec.files_of_parent) args.flags = CLONE_FILES;
    args.set_tid = area.data();
    args.set_tid_size = 1;
    remote_write(parent.host_pid, area.data() + 64, &args, sizeof args);
    long r = parent.leader().call(SYS_clone3, area.data() + 64, sizeof args);
    if (r < 0)
      throw Error(fmt::format("cannot create process {} (child of {}) with its saved PID", rec.pid,
                              rec.ppid),
                  static_cast<int>(-r));
    if (r != rec.pid) fail("process {} was created with PID {}", rec.pid, r);
    RestoreProcess np;
    np.image = &m;
    np.rec = &rec;
    np.host_pid = parent.leader().last_child();
    wait_for_stop(np.host_pid);
    RestoreThread t;
    t.rec = rec.zombie ? nullptr : &rec.threads.at(0);
    t.host_tid = np.host_pid;
    t.inj = std::make_unique<Injector>(np.host_pid, area.code());
    np.threads.push_back(std::move(t));
    procs.push_back(std::move(np));
    by_pid[rec.pid] = procs.size() - 1;
    Injector& ci = procs.back().leader();
    const Process& par = *parent.rec;
    if (rec.ppid == 1 && !rec.files_of_parent) drop_inherited_ptys(procs.back());
    if (rec.sid == rec.pid) {
      ci.call_ok("setsid", SYS_setsid);
      // Before its children exist: they inherit it from it.
      take_controlling_tty(procs.back(), area);
    } else if (rec.sid != par.sid) {
      fail_unsupported("process {}: its session {} has no leader in the job (unsupported)", rec.pid,
                       rec.sid);
    } else if (rec.pgid == rec.pid) {
      ci.call_ok("setpgid", SYS_setpgid, 0, 0);
    }
  }
  // Groups whose leader was created after a member.
  // Zombies too: they are helpers still, and keep their group once dead.
  for (auto& p : procs) {
    const Process& rec = *p.rec;
    if (rec.pgid != rec.pid && rec.sid != rec.pid)
      p.leader().call_ok(fmt::format("setpgid to process group {}", rec.pgid), SYS_setpgid, 0,
                         static_cast<std::uint64_t>(rec.pgid));
  }
  set_foreground_groups(procs, area);
}

void make_zombies(std::vector<RestoreProcess>& procs, const InjectionArea& area) {
  for (auto& p : procs)
    if (p.rec->zombie) make_zombie(p, area);
}

void queue_stops(const std::vector<RestoreProcess>& procs) {
  for (const auto& p : procs) {
    const Process& rec = *p.rec;
    if (rec.zombie || !rec.stop_signal) continue;
    int sig = rec.stop_signal;
    bool handled = std::any_of(rec.sigactions.begin(), rec.sigactions.end(),
                               [&](const SigAction& a) { return a.sig == sig && a.handler != 0; });
    bool blocked = std::all_of(rec.threads.begin(), rec.threads.end(),
                               [&](const Thread& t) { return (t.sigmask >> (sig - 1) & 1) != 0; });
    if (sig != SIGSTOP && (handled || blocked)) sig = SIGSTOP;
    if (::kill(p.host_pid, sig) < 0)
      fail_errno("process {}: queueing its stop signal {}", rec.pid, sig);
  }
}

}  // namespace fsched::ckpt
