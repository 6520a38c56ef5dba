// ckpt_kind: one process that holds one kind of kernel state, for checkpoint/restore
// tests that name the kind that broke. Output depends only on the arguments.
//
//   ckpt_kind KIND ROUNDS [TICK_MS]
//
// Each round uses the state left by the previous round, prints one line and sleeps
// TICK_MS (default 50), so that a dump usually finds the state in use:
//   pipe       a pipe(2) holding the previous round's record, read back and checked
//   fifo       the same through a FIFO made in the current directory (removed at the end)
//   unix       a SOCK_STREAM socketpair(2) holding the previous round's record
//   unix_dgram a SOCK_DGRAM socketpair(2) holding the previous two rounds' datagrams
//   eventfd    an eventfd(2) counter that sums the rounds, read every fourth round
//   epoll      an epoll(7) instance watching a pipe's read end with a chosen epoll_data
//   timerfd    a periodic timerfd (the round waits for its next expiration, no sleep)
//   signalfd   a signalfd(2) reading the SIGUSR1 queued (sigqueue(3), with the round
//              number) by the previous round
//   itimer     a periodic ITIMER_REAL whose SIGALRM ends each round (no sleep)
//   itimer_expired a periodic ITIMER_REAL that expired while SIGALRM is blocked: the
//              kernel keeps it unarmed until the signal is taken; each round checks
//              SIGALRM pending and the timer unarmed with its interval; at the end
//              the signal is taken and two more periods are waited for
//   memfd      a memfd mapped MAP_SHARED: each round writes a page through the mapping
//              and checks the previous one through the fd
//   procattr   process-control attributes set at start and checked every round: nice,
//              SCHED_BATCH with reset-on-fork, timer slack and parent-death signal of
//              the main thread; SCHED_IDLE and another timer slack in a second thread
//              (which checks its own every 10 ms); child subreaper, THP disabled,
//              oom_score_adj, a membarrier registration
//   stopped    two children stopped by job control (SIGSTOP, SIGTSTP) that would write
//              to a pipe every 5 ms if they ran: each round checks the pipe stays
//              empty; at the end they are continued, seen running, and killed
//   zombie     three children that died unreaped: one killed by SIGKILL as the leader
//              of its own process group, one exited with status 7, one killed by
//              SIGUSR1; each round checks their status (waitid WNOWAIT) and groups
//   procfs     the job's /proc is its PID namespace's: /proc/self is getpid(), pid 1 is
//              fsched-init, and a child is found under /proc by its pid; checked every
//              round
//   userns     a child in a user namespace of its own (unshare(2) CLONE_NEWUSER),
//              which the engine refuses to dump; the child answers each round
//   chroot     a child chroot(2)ed into the directory "jail" (made here, holding a
//              marker file): each round it answers with the marker read through "/"
//              and whether "/" is the jail's inode; its cwd stays outside (".." works)
//   cgroup     a child that moved itself into the cgroup v2 sub-cgroup "kind-sub" of
//              the job's cgroup: each round it answers with its /proc/self/cgroup
//              path, which must be the parent's plus "/kind-sub"; removed at the end
//   cgroup_outside the same, but the child moves into the PARENT of the job's cgroup
//              (outside the job): a dump must refuse it
//   cgroup_threaded the same as cgroup, but "kind-sub" is made a threaded cgroup
//              (cgroup.type) before the child moves in: a dump must refuse it
//   zombie_core a child that died of SIGABRT with a core dump (written to "coredir" by
//              a core_pattern naming a file; the test skips otherwise), kept a zombie:
//              a dump must refuse it
//   cgroup_v1  the same as cgroup, but in the cgroup v1 "pids" hierarchy: the child
//              moves into "kind-sub-v1" below the job's pids cgroup: a dump must refuse
//              it (its init is in another v1 group)
//   loginuid   the process sets its audit login uid to 4242 (/proc/self/loginuid):
//              checked every round
//   seccomp_strict a thread in seccomp strict mode (only read, write, exit, sigreturn)
//              that echoes each round's record from one pipe to another
//
// Exit status 0; 1 with a line "FAIL ..." saying what failed.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <linux/membarrier.h>
#include <linux/seccomp.h>
#include <sys/wait.h>
#include <pthread.h>
#include <sys/mman.h>
#include <sched.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "kind_prog.h"

namespace {

using namespace kindprog;

// A record of round r: its number and a payload that depends on it.
std::string record(int r) {
  std::string s = "round " + std::to_string(r) + " ";
  for (int i = 0; i < 20 + r % 50; ++i) s += static_cast<char>('a' + (r * 7 + i) % 26);
  return s + "\n";
}

void write_all(int fd, const std::string& s) {
  for (std::size_t off = 0; off < s.size();) {
    ssize_t n = write(fd, s.data() + off, s.size() - off);
    if (n < 0) {
      if (errno == EINTR) continue;
      die("write");
    }
    off += static_cast<std::size_t>(n);
  }
}

std::string read_exact(int fd, std::size_t len) {
  std::string s(len, '\0');
  for (std::size_t off = 0; off < len;) {
    ssize_t n = read(fd, s.data() + off, len - off);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) die("read");
    off += static_cast<std::size_t>(n);
  }
  return s;
}

// A byte stream from `w` to `r`: each round writes its record and reads back the one
// the previous round left queued.
void stream(int r, int w, int rounds, const char* kind) {
  for (int i = 1; i <= rounds; ++i) {
    write_all(w, record(i));
    if (i > 1) {
      std::string got = read_exact(r, record(i - 1).size());
      if (got != record(i - 1))
        fail(std::string(kind) + ": round " + std::to_string(i) + " read " + got);
    }
    line(std::string(kind) + " " + std::to_string(i) + " queued " +
         std::to_string(record(i).size()));
    tick();
  }
  if (read_exact(r, record(rounds).size()) != record(rounds))
    fail(std::string(kind) + ": last record");
}

void run_pipe(int rounds) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) die("pipe2");
  stream(p[0], p[1], rounds, "pipe");
}

void run_fifo(int rounds) {
  const char* path = "kind.fifo";
  if (mkfifo(path, 0600) < 0) die("mkfifo");
  int r = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (r < 0) die("open fifo for reading");
  int w = open(path, O_WRONLY | O_CLOEXEC);
  if (w < 0) die("open fifo for writing");
  if (fcntl(r, F_SETFL, 0) < 0) die("fcntl");  // blocking reads from here on
  stream(r, w, rounds, "fifo");
  unlink(path);
}

void run_unix(int rounds) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
  stream(sv[1], sv[0], rounds, "unix");
}

void run_unix_dgram(int rounds) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
  // Two datagrams in flight: message boundaries must survive the restore.
  for (int i = 1; i <= rounds + 2; ++i) {
    if (i <= rounds) {
      std::string rec = record(i);
      if (send(sv[0], rec.data(), rec.size(), 0) != static_cast<ssize_t>(rec.size())) die("send");
    }
    if (i > 2) {
      char buf[256];
      ssize_t n = recv(sv[1], buf, sizeof buf, 0);
      if (n < 0) die("recv");
      if (std::string(buf, static_cast<std::size_t>(n)) != record(i - 2))
        fail("unix_dgram: round " + std::to_string(i) + " got another datagram");
    }
    if (i <= rounds) line("unix_dgram " + std::to_string(i));
    tick();
  }
}

void run_eventfd(int rounds) {
  int fd = eventfd(0, EFD_CLOEXEC);
  if (fd < 0) die("eventfd");
  std::uint64_t sum = 0;
  for (int i = 1; i <= rounds; ++i) {
    std::uint64_t v = static_cast<std::uint64_t>(i) * 1000003u;
    if (write(fd, &v, sizeof v) != sizeof v) die("eventfd write");
    sum += v;
    if (i % 4 == 0 || i == rounds) {
      std::uint64_t got = 0;
      if (read(fd, &got, sizeof got) != sizeof got) die("eventfd read");
      if (got != sum)
        fail("eventfd: counter " + std::to_string(got) + ", expected " + std::to_string(sum));
      line("eventfd " + std::to_string(i) + " counter " + std::to_string(got));
      sum = 0;
    } else {
      line("eventfd " + std::to_string(i));
    }
    tick();
  }
}

void run_epoll(int rounds) {
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) die("pipe2");
  int ep = epoll_create1(EPOLL_CLOEXEC);
  if (ep < 0) die("epoll_create1");
  epoll_event ev{};
  ev.events = EPOLLIN;
  ev.data.u64 = 0x6b696e6400000000ULL | static_cast<unsigned>(p[0]);
  if (epoll_ctl(ep, EPOLL_CTL_ADD, p[0], &ev) < 0) die("epoll_ctl");
  for (int i = 1; i <= rounds; ++i) {
    char c = static_cast<char>('A' + i % 26);
    if (write(p[1], &c, 1) != 1) die("write");
    epoll_event got{};
    int n;
    while ((n = epoll_wait(ep, &got, 1, -1)) < 0 && errno == EINTR) {
    }
    if (n != 1) die("epoll_wait");
    if (got.data.u64 != ev.data.u64 || !(got.events & EPOLLIN)) fail("epoll: wrong event data");
    char back = 0;
    if (read(p[0], &back, 1) != 1 || back != c) fail("epoll: wrong byte");
    line("epoll " + std::to_string(i) + " " + back);
    tick();
  }
}

void run_timerfd(int rounds) {
  int fd = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
  if (fd < 0) die("timerfd_create");
  itimerspec its{};
  its.it_interval.tv_sec = its.it_value.tv_sec = g_tick_ms / 1000;
  its.it_interval.tv_nsec = its.it_value.tv_nsec = (g_tick_ms % 1000) * 1000000L;
  if (timerfd_settime(fd, 0, &its, nullptr) < 0) die("timerfd_settime");
  for (int i = 1; i <= rounds; ++i) {
    std::uint64_t n = 0;
    ssize_t r;
    while ((r = read(fd, &n, sizeof n)) < 0 && errno == EINTR) {
    }
    if (r != sizeof n || n == 0) die("timerfd read");
    line("timerfd " + std::to_string(i));
  }
}

void run_signalfd(int rounds) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGUSR1);
  if (sigprocmask(SIG_BLOCK, &set, nullptr) < 0) die("sigprocmask");
  int fd = signalfd(-1, &set, SFD_CLOEXEC);
  if (fd < 0) die("signalfd");
  for (int i = 1; i <= rounds + 1; ++i) {
    if (i > 1) {
      signalfd_siginfo si{};
      if (read(fd, &si, sizeof si) != sizeof si) die("signalfd read");
      if (si.ssi_signo != SIGUSR1 || si.ssi_int != i - 1)
        fail("signalfd: signal " + std::to_string(si.ssi_signo) + " value " +
             std::to_string(si.ssi_int));
      line("signalfd " + std::to_string(i - 1) + " value " + std::to_string(si.ssi_int));
    }
    if (i <= rounds) {
      sigval v{};
      v.sival_int = i;
      if (sigqueue(getpid(), SIGUSR1, v) < 0) die("sigqueue");
      tick();
    }
  }
}

volatile sig_atomic_t g_alarms = 0;
void on_alarm(int) { g_alarms = g_alarms + 1; }

void run_itimer(int rounds) {
  struct sigaction sa {};
  sa.sa_handler = on_alarm;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGALRM, &sa, nullptr) < 0) die("sigaction");
  sigset_t alrm, old;
  sigemptyset(&alrm);
  sigaddset(&alrm, SIGALRM);
  sigprocmask(SIG_BLOCK, &alrm, &old);
  itimerval it{};
  it.it_interval.tv_sec = it.it_value.tv_sec = g_tick_ms / 1000;
  it.it_interval.tv_usec = it.it_value.tv_usec = (g_tick_ms % 1000) * 1000;
  if (setitimer(ITIMER_REAL, &it, nullptr) < 0) die("setitimer");
  for (int i = 1; i <= rounds; ++i) {
    sig_atomic_t seen = g_alarms;
    while (g_alarms == seen) sigsuspend(&old);
    line("itimer " + std::to_string(i));
  }
}

std::string itimer_state() {
  itimerval it{};
  getitimer(ITIMER_REAL, &it);
  sigset_t pend;
  sigpending(&pend);
  return "value " + std::to_string(it.it_value.tv_sec * 1000000 + it.it_value.tv_usec) +
         " interval " + std::to_string(it.it_interval.tv_sec * 1000000 + it.it_interval.tv_usec) +
         " pending " + std::to_string(sigismember(&pend, SIGALRM));
}

void run_itimer_expired(int rounds) {
  struct sigaction sa {};
  sa.sa_handler = on_alarm;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGALRM, &sa, nullptr) < 0) die("sigaction");
  sigset_t alrm, old;
  sigemptyset(&alrm);
  sigaddset(&alrm, SIGALRM);
  sigprocmask(SIG_BLOCK, &alrm, &old);
  itimerval it{};
  it.it_interval.tv_usec = it.it_value.tv_usec = 50000;
  if (setitimer(ITIMER_REAL, &it, nullptr) < 0) die("setitimer");
  timespec ts{0, 120000000L};  // past the first expiry, whatever TICK_MS
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
  const std::string want = "value 0 interval 50000 pending 1";
  for (int i = 1; i <= rounds; ++i) {
    if (itimer_state() != want) fail("itimer_expired: " + itimer_state() + ", expected " + want);
    line("itimer_expired " + std::to_string(i));
    tick();
  }
  for (sig_atomic_t end = g_alarms + 3; g_alarms < end;) sigsuspend(&old);
}

void run_memfd(int rounds) {
  constexpr std::size_t kPage = 4096, kPages = 16;
  int fd = memfd_create("ckpt_kind", MFD_CLOEXEC);
  if (fd < 0) die("memfd_create");
  if (ftruncate(fd, kPage * kPages) < 0) die("ftruncate");
  auto* mem = static_cast<unsigned char*>(
      mmap(nullptr, kPage * kPages, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
  if (mem == MAP_FAILED) die("mmap");
  auto fill = [](int r) { return static_cast<unsigned char>(r * 31 + 7); };
  for (int i = 1; i <= rounds; ++i) {
    std::memset(mem + (i % kPages) * kPage, fill(i), kPage);
    if (i > 1) {
      unsigned char buf[kPage];
      if (pread(fd, buf, kPage, static_cast<off_t>(((i - 1) % kPages) * kPage)) != kPage)
        die("pread");
      for (unsigned char b : buf)
        if (b != fill(i - 1)) fail("memfd: page of round " + std::to_string(i - 1) + " changed");
    }
    line("memfd " + std::to_string(i));
    tick();
  }
}

// sched_setattr(2)'s struct (glibc 2.36 does not declare it).
struct SchedAttr {
  std::uint32_t size, policy;
  std::uint64_t flags;
  std::int32_t nice;
  std::uint32_t priority;
  std::uint64_t runtime, deadline, period;
  std::uint32_t util_min, util_max;
};
constexpr std::uint32_t kSchedBatch = 3, kSchedIdle = 5;
constexpr std::uint64_t kResetOnFork = 1;

void set_sched(std::uint32_t policy, int nice, std::uint64_t flags) {
  SchedAttr a{};
  a.size = sizeof a;
  a.policy = policy;
  a.nice = nice;
  a.flags = flags;
  if (syscall(SYS_sched_setattr, 0, &a, 0) < 0) die("sched_setattr");
}

std::string sched_of_self() {
  SchedAttr a{};
  if (syscall(SYS_sched_getattr, 0, &a, sizeof a, 0) < 0) die("sched_getattr");
  return "policy " + std::to_string(a.policy) + " nice " + std::to_string(a.nice) + " flags " +
         std::to_string(a.flags & kResetOnFork);
}

std::string timerslack_of_self() { return std::to_string(prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0)); }

std::string oom_score_adj() {
  char buf[32] = {};
  int fd = open("/proc/self/oom_score_adj", O_RDONLY | O_CLOEXEC);
  if (fd < 0 || read(fd, buf, sizeof buf - 1) < 0) die("oom_score_adj");
  close(fd);
  std::string s = buf;
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

// Every process-control attribute the main thread and the process hold, as one line.
std::string procattrs() {
  int sub = 0, pdeath = 0;
  prctl(PR_GET_CHILD_SUBREAPER, &sub);
  prctl(PR_GET_PDEATHSIG, &pdeath);
  long mb = syscall(SYS_membarrier, 1 << 9 /* MEMBARRIER_CMD_GET_REGISTRATIONS */, 0, 0);
  return sched_of_self() + " slack " + timerslack_of_self() + " pdeath " + std::to_string(pdeath) +
         " subreaper " + std::to_string(sub) + " thp_disable " +
         std::to_string(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0)) + " oom " + oom_score_adj() +
         " membarrier " + std::to_string(mb);
}

void* procattr_thread(void*) {
  set_sched(kSchedIdle, 0, 0);
  if (prctl(PR_SET_TIMERSLACK, 777000UL) < 0) die("PR_SET_TIMERSLACK");
  const std::string want = sched_of_self() + " slack " + timerslack_of_self();
  for (;;) {
    std::string now = sched_of_self() + " slack " + timerslack_of_self();
    if (now != want) fail("procattr thread: " + now + ", expected " + want);
    timespec ts{0, 10000000L};
    nanosleep(&ts, nullptr);
  }
}

void run_procattr(int rounds) {
  set_sched(kSchedBatch, 7, kResetOnFork);
  if (prctl(PR_SET_TIMERSLACK, 123456UL) < 0) die("PR_SET_TIMERSLACK");
  if (prctl(PR_SET_PDEATHSIG, SIGUSR2) < 0) die("PR_SET_PDEATHSIG");
  if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0) die("PR_SET_CHILD_SUBREAPER");
  if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) < 0) die("PR_SET_THP_DISABLE");
  if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) < 0)
    die("membarrier register");
  int fd = open("/proc/self/oom_score_adj", O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, "345", 3) != 3) die("write oom_score_adj");
  close(fd);
  pthread_t t;
  if (pthread_create(&t, nullptr, procattr_thread, nullptr) != 0) die("pthread_create");
  const std::string want = procattrs();
  line("procattr " + want);
  for (int i = 1; i <= rounds; ++i) {
    std::string now = procattrs();
    if (now != want) fail("procattr: " + now + ", expected " + want);
    line("procattr " + std::to_string(i));
    tick();
  }
}

// A child that writes a byte to `w` every 5 ms while it runs.
pid_t ticking_child(int w) {
  pid_t c = fork();
  if (c < 0) die("fork");
  if (c == 0) {
    for (;;) {
      if (write(w, "x", 1) < 0 && errno != EAGAIN) _exit(3);
      timespec ts{0, 5000000L};
      nanosleep(&ts, nullptr);
    }
  }
  return c;
}

void drain(int r) {
  char buf[4096];
  while (read(r, buf, sizeof buf) > 0) {
  }
}

void run_stopped(int rounds) {
  int p[2];
  if (pipe2(p, O_CLOEXEC | O_NONBLOCK) < 0) die("pipe2");
  pid_t kids[2] = {ticking_child(p[1]), ticking_child(p[1])};
  const int sigs[2] = {SIGSTOP, SIGTSTP};
  for (int i = 0; i < 2; ++i) {
    if (kill(kids[i], sigs[i]) < 0) die("kill stop");
    int st = 0;
    if (waitpid(kids[i], &st, WUNTRACED) != kids[i] || !WIFSTOPPED(st) || WSTOPSIG(st) != sigs[i])
      fail("stopped: child " + std::to_string(i) + " did not stop, status " + std::to_string(st));
  }
  drain(p[0]);
  for (int i = 1; i <= rounds; ++i) {
    tick();
    char c;
    ssize_t n = read(p[0], &c, 1);
    if (n >= 0 || errno != EAGAIN)
      fail("stopped: a stopped child ran in round " + std::to_string(i));
    line("stopped " + std::to_string(i));
  }
  for (pid_t k : kids)
    if (kill(k, SIGCONT) < 0) die("kill SIGCONT");
  int fl = fcntl(p[0], F_GETFL);
  fcntl(p[0], F_SETFL, fl & ~O_NONBLOCK);
  char c;
  if (read(p[0], &c, 1) != 1) die("read after SIGCONT");
  for (pid_t k : kids) {
    kill(k, SIGKILL);
    int st = 0;
    if (waitpid(k, &st, 0) != k || !WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL)
      fail("stopped: child ended with status " + std::to_string(st));
  }
}

// Forks a child that runs `body` and is reaped only at the end.
template <class F>
pid_t child(F body) {
  pid_t c = fork();
  if (c < 0) die("fork");
  if (c == 0) {
    body();
    _exit(99);
  }
  return c;
}

// What waitid(2) says of an unreaped child, without reaping it.
std::string zombie_state(pid_t z) {
  siginfo_t si{};
  if (waitid(P_PID, static_cast<id_t>(z), &si, WEXITED | WNOHANG | WNOWAIT) < 0) die("waitid");
  return "code " + std::to_string(si.si_code) + " status " + std::to_string(si.si_status) +
         " pgid " +
         std::to_string(getpgid(z) == z           ? 0
                        : getpgid(z) == getpgrp() ? 1
                                                  : -1);
}

// A child that dumped core (core_pattern: a file in its working directory "coredir")
// and is kept a zombie; each round its status must still say so (waitid WNOWAIT).
void run_zombie_core(int rounds) {
  if (mkdir("coredir", 0700) < 0 && errno != EEXIST) die("mkdir coredir");
  pid_t z = child([] {
    rlimit rl{};
    if (getrlimit(RLIMIT_CORE, &rl) < 0) die("getrlimit");
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_CORE, &rl) < 0 || chdir("coredir") < 0) die("core set-up");
    signal(SIGABRT, SIG_DFL);
    abort();
  });
  for (int r = 1; r <= rounds; ++r) {
    siginfo_t si{};
    if (waitid(P_PID, static_cast<id_t>(z), &si, WEXITED | WNOWAIT) < 0) die("waitid");
    if (si.si_code != CLD_DUMPED || si.si_status != SIGABRT)
      fail("zombie_core: code " + std::to_string(si.si_code) + " status " +
           std::to_string(si.si_status) + ", not a core dump of SIGABRT");
    line("zombie_core " + std::to_string(r));
    tick();
  }
  int st = 0;
  if (waitpid(z, &st, 0) != z || !WCOREDUMP(st)) die("waitpid zombie_core");
  // The core file differs from run to run: gone, so that outputs compare equal.
  DIR* d = opendir("coredir");
  if (!d) die("opendir coredir");
  while (dirent* e = readdir(d))
    if (e->d_name[0] != '.' && unlinkat(dirfd(d), e->d_name, 0) < 0) die("unlink core");
  closedir(d);
  if (rmdir("coredir") < 0) die("rmdir coredir");
}

void run_zombie(int rounds) {
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) die("pipe2");
  pid_t own = child([&] {
    setpgid(0, 0);
    write_all(p[1], "k");
    pause();
  });
  char c;
  if (read(p[0], &c, 1) != 1) die("read");
  pid_t zs[3] = {own, child([] { _exit(7); }), child([] {
                   signal(SIGUSR1, SIG_DFL);
                   pause();
                 })};
  if (kill(zs[0], SIGKILL) < 0 || kill(zs[2], SIGUSR1) < 0) die("kill");
  const std::string want[3] = {"code 2 status 9 pgid 0", "code 1 status 7 pgid 1",
                               "code 2 status 10 pgid 1"};
  for (int i = 0; i < 3; ++i) {
    siginfo_t si{};
    if (waitid(P_PID, static_cast<id_t>(zs[i]), &si, WEXITED | WNOWAIT) < 0) die("waitid");
    if (zombie_state(zs[i]) != want[i])
      fail("zombie " + std::to_string(i) + ": " + zombie_state(zs[i]) + ", expected " + want[i]);
  }
  for (int r = 1; r <= rounds; ++r) {
    for (int i = 0; i < 3; ++i)
      if (zombie_state(zs[i]) != want[i])
        fail("zombie " + std::to_string(i) + " round " + std::to_string(r) + ": " +
             zombie_state(zs[i]) + ", expected " + want[i]);
    line("zombie " + std::to_string(r));
    tick();
  }
  for (pid_t z : zs)
    if (waitpid(z, nullptr, 0) != z) die("waitpid");
}

std::string slurp(const std::string& path) {
  int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return "(cannot open " + path + ": " + std::strerror(errno) + ")";
  std::string s;
  char buf[4096];
  for (ssize_t n; (n = read(fd, buf, sizeof buf)) > 0;) s.append(buf, static_cast<std::size_t>(n));
  close(fd);
  return s;
}

std::string slurp_fd(const std::string& path) {
  std::string s = slurp(path);
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

ino_t g_jail_ino = 0;

std::string first_word(const std::string& s) { return s.substr(0, s.find_first_of(" \n")); }

void run_procfs(int rounds) {
  pid_t kid = child([] {
    for (;;) pause();
  });
  for (int i = 1; i <= rounds; ++i) {
    char self[64] = {};
    if (readlink("/proc/self", self, sizeof self - 1) < 0) die("readlink /proc/self");
    std::string me = std::to_string(getpid());
    if (self != me) fail("procfs: /proc/self is " + std::string(self) + ", getpid() " + me);
    if (first_word(slurp("/proc/self/stat")) != me)
      fail("procfs: /proc/self/stat says " + first_word(slurp("/proc/self/stat")));
    if (slurp("/proc/1/comm") != "fsched-init\n")
      fail("procfs: /proc/1/comm is " + slurp("/proc/1/comm"));
    std::string ks = slurp("/proc/" + std::to_string(kid) + "/stat");
    if (first_word(ks) != std::to_string(kid)) fail("procfs: child's stat " + ks);
    line("procfs " + std::to_string(i));
    tick();
  }
  kill(kid, SIGKILL);
  waitpid(kid, nullptr, 0);
}

void run_userns(int rounds) {
  int ask[2], ans[2];
  if (pipe2(ask, O_CLOEXEC) < 0 || pipe2(ans, O_CLOEXEC) < 0) die("pipe2");
  pid_t kid = child([&] {
    if (unshare(CLONE_NEWUSER) < 0) die("unshare(CLONE_NEWUSER)");
    close(ask[1]);
    close(ans[0]);
    char c;
    while (read(ask[0], &c, 1) == 1) write_all(ans[1], "y");
  });
  for (int i = 1; i <= rounds; ++i) {
    write_all(ask[1], "?");
    if (read_exact(ans[0], 1) != "y") fail("userns: no answer");
    line("userns " + std::to_string(i));
    tick();
  }
  close(ask[1]);
  waitpid(kid, nullptr, 0);
}

// A child that answers each byte on `ask` with answer() + "\n" on `ans`.
template <class F>
pid_t answering_child(int ask[2], int ans[2], F answer) {
  return child([=] {
    close(ask[1]);
    close(ans[0]);
    char c;
    while (read(ask[0], &c, 1) == 1) write_all(ans[1], answer() + "\n");
    _exit(0);
  });
}

std::string ask_child(int ask, int ans) {
  write_all(ask, "?");
  std::string got;
  char c;
  while (read(ans, &c, 1) == 1 && c != '\n') got += c;
  return got;
}

void run_chroot(int rounds) {
  mkdir("jail", 0755);
  int mfd = open("jail/marker", O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (mfd < 0) die("create jail/marker");
  write_all(mfd, "in the jail");
  close(mfd);
  struct stat jail {};
  if (stat("jail", &jail) < 0) die("stat jail");
  g_jail_ino = jail.st_ino;
  int ask[2], ans[2];
  if (pipe2(ask, O_CLOEXEC) < 0 || pipe2(ans, O_CLOEXEC) < 0) die("pipe2");
  pid_t kid = answering_child(ask, ans, [] {
    static bool jailed = chroot("jail") == 0;
    if (!jailed) return std::string("chroot failed: ") + std::strerror(errno);
    struct stat root {};
    if (stat("/", &root) < 0) return std::string("stat /: ") + std::strerror(errno);
    return slurp_fd("/marker") + (root.st_ino == g_jail_ino ? " root=jail" : " root=other");
  });
  for (int i = 1; i <= rounds; ++i) {
    std::string got = ask_child(ask[1], ans[0]);
    if (got != "in the jail root=jail") fail("chroot: round " + std::to_string(i) + ": " + got);
    line("chroot " + std::to_string(i));
    tick();
  }
  close(ask[1]);
  waitpid(kid, nullptr, 0);
}

// The cgroup v2 path of this process ("0::PATH"), or with `v1` its path in the v1
// pids hierarchy ("N:pids:PATH"); and where cgroup2 is mounted.
std::string own_cgroup(bool v1 = false) {
  std::string s = "\n" + slurp_fd("/proc/self/cgroup");
  const std::string key = v1 ? ":pids:" : "\n0::";
  auto at = s.find(key);
  if (at == std::string::npos) return v1 ? "(no pids cgroup)" : "(no cgroup v2)";
  return s.substr(at + key.size(), s.find('\n', at + 1) - at - key.size());
}

// Where the cgroup v1 pids hierarchy is mounted.
std::string pids_v1_mount() {
  std::string m = slurp_fd("/proc/self/mounts");
  for (std::size_t at = 0; at < m.size();) {
    std::size_t eol = m.find('\n', at);
    std::string l = m.substr(at, eol - at);
    at = eol == std::string::npos ? m.size() : eol + 1;
    auto a = l.find(' '), b = l.find(' ', a + 1), c = l.find(' ', b + 1), d = l.find(' ', c + 1);
    if (l.substr(b + 1, c - b - 1) != "cgroup") continue;
    std::string opts = "," + l.substr(c + 1, d - c - 1) + ",";
    if (opts.find(",pids,") != std::string::npos) return l.substr(a + 1, b - a - 1);
  }
  die("no cgroup v1 pids hierarchy mounted");
}

std::string cgroup2_mount() {
  std::string m = slurp_fd("/proc/self/mounts");
  auto at = m.find(" cgroup2 ");
  if (at == std::string::npos) die("no cgroup2 mounted");
  auto b = m.rfind(' ', at - 1);
  return m.substr(b + 1, at - b - 1);
}

enum class CgroupMove { kSub, kOutside, kThreaded, kV1 };

void cgroup_child(int rounds, CgroupMove how) {
  const bool outside = how == CgroupMove::kOutside, v1 = how == CgroupMove::kV1;
  std::string mine = own_cgroup(v1);
  std::string want = (mine == "/" ? "" : mine) + (v1 ? "/kind-sub-v1" : "/kind-sub");
  if (outside) {
    if (mine == "/") die("cgroup_outside: the job is in the root cgroup");
    want = mine.substr(0, mine.rfind('/'));
    if (want.empty()) want = "/";
  }
  std::string sub = (v1 ? pids_v1_mount() : cgroup2_mount()) + (want == "/" ? "" : want);
  if (!outside && mkdir(sub.c_str(), 0755) < 0 && errno != EEXIST) die("mkdir " + sub);
  if (how == CgroupMove::kThreaded) {
    int fd = open((sub + "/cgroup.type").c_str(), O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "threaded", 8) != 8 || close(fd) < 0) die("threaded " + sub);
  }
  int ask[2], ans[2];
  if (pipe2(ask, O_CLOEXEC) < 0 || pipe2(ans, O_CLOEXEC) < 0) die("pipe2");
  // Into a threaded cgroup by thread: the process stays in its threaded domain, the
  // job's cgroup.
  const char* file = how == CgroupMove::kThreaded ? "/cgroup.threads" : "/cgroup.procs";
  pid_t kid = answering_child(ask, ans, [sub, v1, file] {
    static bool moved = [&] {
      int fd = open((sub + file).c_str(), O_WRONLY | O_CLOEXEC);
      return fd >= 0 && write(fd, "0", 1) == 1 && close(fd) == 0;
    }();
    if (!moved) return std::string("cannot move into ") + sub + ": " + std::strerror(errno);
    return own_cgroup(v1);
  });
  for (int i = 1; i <= rounds; ++i) {
    std::string got = ask_child(ask[1], ans[0]);
    if (got != want)
      fail("cgroup: round " + std::to_string(i) + ": child in " + got + ", not " + want);
    if (own_cgroup(v1) != mine) fail("cgroup: the parent moved to " + own_cgroup(v1));
    line("cgroup " + std::to_string(i));
    tick();
  }
  close(ask[1]);
  waitpid(kid, nullptr, 0);
  if (!outside && rmdir(sub.c_str()) < 0) die("rmdir " + sub);
}

void run_cgroup(int rounds) { cgroup_child(rounds, CgroupMove::kSub); }
void run_cgroup_outside(int rounds) { cgroup_child(rounds, CgroupMove::kOutside); }
void run_cgroup_threaded(int rounds) { cgroup_child(rounds, CgroupMove::kThreaded); }
void run_cgroup_v1(int rounds) { cgroup_child(rounds, CgroupMove::kV1); }

void run_loginuid(int rounds) {
  int fd = open("/proc/self/loginuid", O_WRONLY | O_CLOEXEC);
  if (fd < 0 || write(fd, "4242", 4) != 4) die("set /proc/self/loginuid");
  close(fd);
  for (int i = 1; i <= rounds; ++i) {
    std::string now = slurp_fd("/proc/self/loginuid");
    if (now != "4242") fail("loginuid: round " + std::to_string(i) + ": " + now);
    line("loginuid " + std::to_string(i));
    tick();
  }
}

constexpr std::size_t kStrictRecord = 96;
int g_strict_in = -1, g_strict_out = -1;

// Only read, write and _exit from here on: seccomp strict mode kills anything else.
void* strict_thread(void*) {
  if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT) < 0) die("PR_SET_SECCOMP strict");
  char buf[kStrictRecord];
  for (;;) {
    std::size_t got = 0;
    while (got < sizeof buf) {
      long n = syscall(SYS_read, g_strict_in, buf + got, sizeof buf - got);
      if (n == -EINTR || (n < 0 && errno == EINTR)) continue;
      if (n <= 0) syscall(SYS_exit, 0);
      got += static_cast<std::size_t>(n);
    }
    for (std::size_t off = 0; off < got;) {
      long n = syscall(SYS_write, g_strict_out, buf + off, got - off);
      if (n <= 0) syscall(SYS_exit, 1);
      off += static_cast<std::size_t>(n);
    }
  }
}

void run_seccomp_strict(int rounds) {
  int a[2], b[2];
  if (pipe2(a, O_CLOEXEC) < 0 || pipe2(b, O_CLOEXEC) < 0) die("pipe2");
  g_strict_in = a[0];
  g_strict_out = b[1];
  pthread_t t;
  if (pthread_create(&t, nullptr, strict_thread, nullptr) != 0) die("pthread_create");
  for (int i = 1; i <= rounds; ++i) {
    std::string rec = record(i);
    rec.resize(kStrictRecord, '.');
    write_all(a[1], rec);
    std::string got = read_exact(b[0], kStrictRecord);
    if (got != rec) fail("seccomp_strict: round " + std::to_string(i) + " echoed " + got);
    line("seccomp_strict " + std::to_string(i));
    tick();
  }
  close(a[1]);
  if (pthread_join(t, nullptr) != 0) die("pthread_join");
}

}  // namespace

int main(int argc, char** argv) {
  static const Kind kKinds[] = {
      {"pipe", run_pipe},
      {"fifo", run_fifo},
      {"unix", run_unix},
      {"unix_dgram", run_unix_dgram},
      {"eventfd", run_eventfd},
      {"epoll", run_epoll},
      {"timerfd", run_timerfd},
      {"signalfd", run_signalfd},
      {"itimer", run_itimer},
      {"memfd", run_memfd},
      {"itimer_expired", run_itimer_expired},
      {"procattr", run_procattr},
      {"stopped", run_stopped},
      {"zombie", run_zombie},
      {"seccomp_strict", run_seccomp_strict},
      {"procfs", run_procfs},
      {"userns", run_userns},
      {"chroot", run_chroot},
      {"cgroup", run_cgroup},
      {"cgroup_outside", run_cgroup_outside},
      {"cgroup_threaded", run_cgroup_threaded},
      {"cgroup_v1", run_cgroup_v1},
      {"zombie_core", run_zombie_core},
      {"loginuid", run_loginuid},
  };
  return run_kind(argc, argv, "ckpt_kind", kKinds);
}
