// ckpt_misc_kind: one process that holds one kind of "miscellaneous" kernel state
// (issue 13, item 3: POSIX timers, pidfds, netlink, AIO, io_uring, fanotify), for
// checkpoint/restore tests that name the kind that broke. Output depends only on the
// arguments.
//
//   ckpt_misc_kind KIND ROUNDS [TICK_MS]
//
// Each round checks the state, prints one line and sleeps TICK_MS (default 50).
// Restored kinds:
//   posix_timers  four POSIX timers (timer_create(2)), made after one created and
//                 deleted so that their ids do not start at 0: a periodic CLOCK_MONOTONIC
//                 timer signalling SIGRTMIN with a pointer value, a one-shot
//                 CLOCK_REALTIME timer 1000 s away (SIGEV_NONE), a disarmed
//                 CLOCK_BOOTTIME timer (SIGRTMIN+2), a CLOCK_PROCESS_CPUTIME_ID
//                 timer aimed at the thread (SIGEV_THREAD_ID, SIGRTMIN+1, an int value).
//                 Every round the periodic one must deliver SIGRTMIN with its id and
//                 value (SI_TIMER), the others keep their settings (timer_gettime(2))
//                 and the realtime one's remaining time decreases.
//   pidfd         a pidfd of a child (pidfd_open(2), PIDFD_NONBLOCK) and one of the
//                 process itself: each round both must name their process (fdinfo
//                 "Pid:"), signal 0 must reach them, the child must not have exited
//                 (waitid(2) P_PIDFD, WNOHANG); at the end the child is killed and
//                 reaped through its pidfd.
//   netlink       a NETLINK_ROUTE socket bound to a port id the kernel chose, with
//                 NETLINK_EXT_ACK and NETLINK_GET_STRICT_CHK on, asked for the links
//                 every round (RTM_GETLINK); port id and options checked every round
// Kinds the dump must refuse (the job runs on unharmed):
//   pidfd_exited  a pidfd of a child that exited and was reaped ("Pid: -1")
//   netlink_queued  a second NETLINK_ROUTE socket that holds an answer never read
//   aio           an AIO context (io_setup(2)) reading a file every round
//   io_uring      an io_uring instance (io_uring_setup(2)) with its rings mapped,
//                 running a NOP every round
//   fanotify      a fanotify group (fanotify_init(2), FAN_REPORT_FID) watching the
//                 working directory for created files, one every round
//   timer_alarm   a POSIX timer on CLOCK_BOOTTIME_ALARM (SIGEV_NONE, 1000 s away),
//                 its time left checked every round
//   timer_other_cpu  a POSIX timer on the CPU clock of a child (clock_getcpuclockid(3)),
//                 SIGEV_NONE, 1000 s away; the child sleeps until killed at the end
//   timer_thread_cpu  a POSIX timer on CLOCK_THREAD_CPUTIME_ID in a process with a
//                 second thread (which sleeps), SIGEV_NONE, 1000 s away
//
// Exit status 0; 1 with a line "FAIL ..." saying what failed.
#include <fcntl.h>
#include <linux/aio_abi.h>
#include <linux/io_uring.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <pthread.h>
#include <signal.h>
#include <sys/fanotify.h>
#include <sys/mman.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <string>

#include "kind_prog.h"

namespace {

using namespace kindprog;

int check(int r, const std::string& what) {
  if (r < 0) die(what);
  return r;
}

std::string str(long v) { return std::to_string(v); }

// ------------------------------------------------------------------ posix_timers

// The kernel's timer id of a siginfo_t of an SI_TIMER signal (glibc: si_timerid).
int si_timer_id(const siginfo_t& si) { return si.si_timerid; }

timer_t make_timer(clockid_t clock, sigevent* ev, const std::string& what) {
  timer_t t{};
  if (timer_create(clock, ev, &t) < 0) die("timer_create " + what);
  return t;
}

int timer_id(timer_t t) { return static_cast<int>(reinterpret_cast<std::intptr_t>(t)); }

void set_timer(timer_t t, long value_ns, long interval_ns, const std::string& what) {
  itimerspec its{};
  its.it_value = {value_ns / 1000000000L, value_ns % 1000000000L};
  its.it_interval = {interval_ns / 1000000000L, interval_ns % 1000000000L};
  if (timer_settime(t, 0, &its, nullptr) < 0) die("timer_settime " + what);
}

itimerspec get_timer(timer_t t, const std::string& what) {
  itimerspec its{};
  if (timer_gettime(t, &its) < 0) die("timer_gettime " + what);
  return its;
}

long ns(const timespec& ts) { return ts.tv_sec * 1000000000L + ts.tv_nsec; }

// The value the periodic timer carries: an address in this program (a pointer, the
// whole 64 bits, as a program passing its own struct would).
int g_cookie;

void run_posix_timers(int rounds) {
  const int rt = SIGRTMIN;
  sigset_t block;
  sigemptyset(&block);
  sigaddset(&block, rt);
  sigaddset(&block, rt + 1);
  check(sigprocmask(SIG_BLOCK, &block, nullptr), "sigprocmask");
  // Ids of a new process start at 0: one made and deleted first moves them on.
  timer_t gone = make_timer(CLOCK_MONOTONIC, nullptr, "first");
  check(timer_delete(gone), "timer_delete");

  sigevent ev{};
  ev.sigev_notify = SIGEV_SIGNAL;
  ev.sigev_signo = rt;
  ev.sigev_value.sival_ptr = &g_cookie;
  timer_t periodic = make_timer(CLOCK_MONOTONIC, &ev, "periodic");
  sigevent none{};
  none.sigev_notify = SIGEV_NONE;
  timer_t oneshot = make_timer(CLOCK_REALTIME, &none, "oneshot");
  // A signalling one: a disarmed SIGEV_NONE timer reports the time left before it was
  // disarmed (posix-timers.c common_timer_get).
  sigevent dev{};
  dev.sigev_notify = SIGEV_SIGNAL;
  dev.sigev_signo = rt + 2;
  timer_t disarmed = make_timer(CLOCK_BOOTTIME, &dev, "disarmed");
  sigevent tev{};
  tev.sigev_notify = SIGEV_THREAD_ID;
  tev.sigev_signo = rt + 1;
  tev.sigev_value.sival_int = 77;
  tev._sigev_un._tid = gettid();
  timer_t cpu = make_timer(CLOCK_PROCESS_CPUTIME_ID, &tev, "cpu");

  const long tick_ns = g_tick_ms * 1000000L;
  set_timer(periodic, tick_ns, tick_ns, "periodic");
  set_timer(oneshot, 1000 * 1000000000L, 0, "oneshot");
  // Armed then disarmed: it exists with no time set.
  set_timer(disarmed, 1000 * 1000000000L, 7 * 1000000000L, "disarmed");
  set_timer(disarmed, 0, 0, "disarmed");
  set_timer(cpu, 1000 * 1000000000L, 0, "cpu");
  const std::string ids = str(timer_id(periodic)) + " " + str(timer_id(oneshot)) + " " +
                          str(timer_id(disarmed)) + " " + str(timer_id(cpu));
  line("timers " + ids);

  long last_left = 1000 * 1000000000L + 1;
  for (int r = 1; r <= rounds; ++r) {
    const std::string at = " (round " + str(r) + ")";
    // The periodic timer fires every tick: one signal at least within 10 s, each
    // with its id and value. More may be queued (a restored pending one and the
    // timer's next); all must be its.
    timespec wait{10, 0};
    int got = 0;
    for (;;) {
      siginfo_t si{};
      int s = sigtimedwait(&block, &si, &wait);
      if (s < 0) {
        if (errno == EINTR) continue;
        if (errno == EAGAIN) break;
        die("sigtimedwait");
      }
      if (s != rt) fail("signal " + str(s) + " arrived, not the periodic timer's" + at);
      if (si.si_code != SI_TIMER) fail("si_code " + str(si.si_code) + ", not SI_TIMER" + at);
      if (si_timer_id(si) != timer_id(periodic))
        fail("signal of timer " + str(si_timer_id(si)) + ", not " + str(timer_id(periodic)) + at);
      if (si.si_value.sival_ptr != &g_cookie) fail("sigev_value changed" + at);
      ++got;
      wait = {0, 0};
    }
    if (!got) fail("the periodic timer did not fire within 10 s" + at);

    itimerspec p = get_timer(periodic, "periodic");
    if (ns(p.it_interval) != tick_ns) fail("periodic interval " + str(ns(p.it_interval)) + at);
    if (ns(p.it_value) <= 0 || ns(p.it_value) > tick_ns)
      fail("periodic time left " + str(ns(p.it_value)) + at);
    itimerspec o = get_timer(oneshot, "oneshot");
    long left = ns(o.it_value);
    if (ns(o.it_interval) != 0 || left <= 0 || left >= last_left)
      fail("oneshot time left " + str(left) + " after " + str(last_left) + at);
    // 1000 s less the time the run has taken: far more than what is left unless the
    // timer was set again.
    if (left < 900 * 1000000000L) fail("oneshot time left " + str(left) + at);
    last_left = left;
    itimerspec d = get_timer(disarmed, "disarmed");
    if (ns(d.it_value) != 0 || ns(d.it_interval) != 0)
      fail("disarmed timer " + str(ns(d.it_value)) + "/" + str(ns(d.it_interval)) + at);
    itimerspec c = get_timer(cpu, "cpu");
    if (ns(c.it_value) <= 990 * 1000000000L || ns(c.it_interval) != 0)
      fail("cpu timer time left " + str(ns(c.it_value)) + at);
    line("round " + str(r) + " timers " + ids + " fired");
    tick();
  }
  // The CPU timer's signal and target are checked once at the end: it fires on CPU
  // time, so it is set to fire now.
  set_timer(cpu, 1000000, 0, "cpu");  // 1 ms of CPU time
  sigset_t one;
  sigemptyset(&one);
  sigaddset(&one, rt + 1);
  siginfo_t si{};
  timespec now{0, 0}, start{};
  clock_gettime(CLOCK_MONOTONIC, &start);
  // Spins (CPU time passes only while running) until it arrives, 10 s at most.
  while (sigtimedwait(&one, &si, &now) != rt + 1) {
    timespec t{};
    clock_gettime(CLOCK_MONOTONIC, &t);
    if (t.tv_sec - start.tv_sec > 10) fail("the cpu timer did not fire");
  }
  if (si.si_code != SI_TIMER || si_timer_id(si) != timer_id(cpu) || si.si_value.sival_int != 77)
    fail("cpu timer signal: code " + str(si.si_code) + " id " + str(si_timer_id(si)) + " value " +
         str(si.si_value.sival_int));
  line("cpu timer fired");
}

// A SIGEV_NONE timer on `clock`, 1000 s away, whose time left must not grow, checked
// every round.
void hold_timer(int rounds, clockid_t clock, const char* kind) {
  sigevent none{};
  none.sigev_notify = SIGEV_NONE;
  timer_t t = make_timer(clock, &none, kind);
  set_timer(t, 1000 * 1000000000L, 0, kind);
  long last = 1000 * 1000000000L + 1;
  for (int r = 1; r <= rounds; ++r) {
    long left = ns(get_timer(t, kind).it_value);
    if (left <= 0 || left > last) fail(std::string(kind) + ": time left " + str(left));
    last = left;
    line(std::string(kind) + " " + str(r));
    tick();
  }
}

void run_timer_alarm(int rounds) { hold_timer(rounds, CLOCK_BOOTTIME_ALARM, "timer_alarm"); }

void run_timer_other_cpu(int rounds) {
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    for (;;) pause();
  }
  clockid_t clock{};
  if (clock_getcpuclockid(child, &clock) != 0) fail("clock_getcpuclockid");
  hold_timer(rounds, clock, "timer_other_cpu");
  kill(child, SIGKILL);
  waitpid(child, nullptr, 0);
}

void* sleep_forever(void*) {
  for (;;) pause();
}

void run_timer_thread_cpu(int rounds) {
  pthread_t t;
  if (pthread_create(&t, nullptr, sleep_forever, nullptr) != 0) fail("pthread_create");
  hold_timer(rounds, CLOCK_THREAD_CPUTIME_ID, "timer_thread_cpu");
}

// ------------------------------------------------------------------ pidfd

// The "Pid:" of fd's fdinfo (proc(5)): the pid it refers to, -1 once reaped.
long fdinfo_pid(int fd) {
  std::ifstream in("/proc/self/fdinfo/" + std::to_string(fd));
  std::string key;
  while (in >> key) {
    if (key == "Pid:") {
      long v = 0;
      in >> v;
      return v;
    }
    in.ignore(1 << 20, '\n');
  }
  fail("no Pid: in fdinfo of fd " + std::to_string(fd));
}

pid_t sleeper() {
  pid_t c = fork();
  if (c < 0) die("fork");
  if (c == 0) {
    for (;;) pause();
  }
  return c;
}

void run_pidfd(int rounds) {
  pid_t child = sleeper();
  int cfd = check(static_cast<int>(syscall(SYS_pidfd_open, child, PIDFD_NONBLOCK)), "pidfd_open");
  int sfd = check(static_cast<int>(syscall(SYS_pidfd_open, getpid(), 0)), "pidfd_open self");
  for (int r = 1; r <= rounds; ++r) {
    const std::string at = " (round " + str(r) + ")";
    if (fdinfo_pid(cfd) != child) fail("the child's pidfd names pid " + str(fdinfo_pid(cfd)) + at);
    if (fdinfo_pid(sfd) != getpid()) fail("the own pidfd names pid " + str(fdinfo_pid(sfd)) + at);
    if (!(fcntl(cfd, F_GETFL) & O_NONBLOCK)) fail("the child's pidfd lost O_NONBLOCK" + at);
    if (fcntl(sfd, F_GETFL) & O_NONBLOCK) fail("the own pidfd has O_NONBLOCK" + at);
    check(static_cast<int>(syscall(SYS_pidfd_send_signal, cfd, 0, nullptr, 0)), "signal 0 child");
    check(static_cast<int>(syscall(SYS_pidfd_send_signal, sfd, 0, nullptr, 0)), "signal 0 self");
    siginfo_t si{};
    // PIDFD_NONBLOCK: waitid on it fails with EAGAIN while the child runs, even
    // without WNOHANG.
    if (waitid(P_PIDFD, cfd, &si, WEXITED) == 0 || errno != EAGAIN)
      fail("waitid on the child's pidfd did not say EAGAIN" + at);
    line("round " + str(r) + " pidfd child alive");
    tick();
  }
  check(static_cast<int>(syscall(SYS_pidfd_send_signal, cfd, SIGKILL, nullptr, 0)), "kill child");
  siginfo_t si{};
  timespec ts{0, 1000000};
  for (int i = 0; i < 10000; ++i) {
    if (waitid(P_PIDFD, cfd, &si, WEXITED) == 0) break;
    if (errno != EAGAIN) die("waitid P_PIDFD");
    nanosleep(&ts, nullptr);
  }
  if (si.si_pid != child || si.si_code != CLD_KILLED || si.si_status != SIGKILL)
    fail("the child was not reaped through its pidfd");
  line("child killed");
}

void run_pidfd_exited(int rounds) {
  pid_t child = sleeper();
  int cfd = check(static_cast<int>(syscall(SYS_pidfd_open, child, 0)), "pidfd_open");
  kill(child, SIGKILL);
  check(waitpid(child, nullptr, 0), "waitpid");
  for (int r = 1; r <= rounds; ++r) {
    if (fdinfo_pid(cfd) != -1) fail("pidfd of a reaped child names " + str(fdinfo_pid(cfd)));
    if (syscall(SYS_pidfd_send_signal, cfd, 0, nullptr, 0) == 0 || errno != ESRCH)
      fail("signal through the pidfd of a reaped child did not fail with ESRCH");
    line("round " + str(r) + " pidfd of an exited child");
    tick();
  }
}

// ------------------------------------------------------------------ netlink

// Sends RTM_GETLINK (a dump of the links) and reads the answer; true if "lo" is in it.
bool links_have_lo(int s, unsigned seq) {
  struct {
    nlmsghdr h;
    ifinfomsg i;
  } req{};
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = RTM_GETLINK;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.h.nlmsg_seq = seq;
  req.i.ifi_family = AF_UNSPEC;
  if (send(s, &req, sizeof req, 0) != static_cast<ssize_t>(sizeof req)) die("netlink send");
  bool lo = false;
  static char buf[1 << 16];
  for (;;) {
    ssize_t n = check(static_cast<int>(recv(s, buf, sizeof buf, 0)), "netlink recv");
    for (auto* h = reinterpret_cast<nlmsghdr*>(buf); NLMSG_OK(h, n); h = NLMSG_NEXT(h, n)) {
      if (h->nlmsg_seq != seq) fail("netlink answer with sequence " + str(h->nlmsg_seq));
      if (h->nlmsg_type == NLMSG_DONE) return lo;
      if (h->nlmsg_type == NLMSG_ERROR) fail("netlink error answer");
      if (h->nlmsg_type != RTM_NEWLINK) continue;
      auto* ifi = static_cast<ifinfomsg*>(NLMSG_DATA(h));
      int len = static_cast<int>(h->nlmsg_len - NLMSG_LENGTH(sizeof *ifi));
      for (auto* a = IFLA_RTA(ifi); RTA_OK(a, len); a = RTA_NEXT(a, len))
        if (a->rta_type == IFLA_IFNAME && std::strcmp(static_cast<char*>(RTA_DATA(a)), "lo") == 0)
          lo = true;
    }
  }
}

std::uint32_t port_id(int s) {
  sockaddr_nl a{};
  socklen_t len = sizeof a;
  check(getsockname(s, reinterpret_cast<sockaddr*>(&a), &len), "getsockname");
  return a.nl_pid;
}

int nl_opt(int s, int opt) {
  int v = 0;
  socklen_t len = sizeof v;
  check(getsockopt(s, SOL_NETLINK, opt, &v, &len), "getsockopt");
  return v;
}

int route_socket() {
  int s = check(socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE), "socket");
  sockaddr_nl a{};
  a.nl_family = AF_NETLINK;  // port id 0: the kernel chooses one
  check(bind(s, reinterpret_cast<sockaddr*>(&a), sizeof a), "bind");
  return s;
}

void run_netlink(int rounds) {
  int s = route_socket();
  const int one = 1;
  check(setsockopt(s, SOL_NETLINK, NETLINK_EXT_ACK, &one, sizeof one), "NETLINK_EXT_ACK");
  check(setsockopt(s, SOL_NETLINK, NETLINK_GET_STRICT_CHK, &one, sizeof one), "STRICT_CHK");
  const std::uint32_t port = port_id(s);
  if (!port) fail("no port id after bind");
  for (int r = 1; r <= rounds; ++r) {
    const std::string at = " (round " + str(r) + ")";
    if (port_id(s) != port) fail("port id changed" + at);
    if (!nl_opt(s, NETLINK_EXT_ACK) || !nl_opt(s, NETLINK_GET_STRICT_CHK) ||
        nl_opt(s, NETLINK_NO_ENOBUFS))
      fail("netlink options changed" + at);
    if (!links_have_lo(s, static_cast<unsigned>(r))) fail("no lo among the links" + at);
    line("round " + str(r) + " netlink lo");
    tick();
  }
}

// A second socket keeps the answer to a request unread: it must still be there.
void run_netlink_queued(int rounds) {
  int s = route_socket();
  int q = route_socket();
  struct {
    nlmsghdr h;
    ifinfomsg i;
  } req{};
  req.h.nlmsg_len = sizeof req;
  req.h.nlmsg_type = RTM_GETLINK;
  req.h.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
  req.h.nlmsg_seq = 1000;
  if (send(q, &req, sizeof req, 0) != static_cast<ssize_t>(sizeof req)) die("netlink send");
  for (int r = 1; r <= rounds; ++r) {
    char byte;
    if (recv(q, &byte, 1, MSG_PEEK | MSG_DONTWAIT) < 0) die("the queued answer is gone");
    if (!links_have_lo(s, static_cast<unsigned>(r))) fail("no lo among the links");
    line("round " + str(r) + " netlink answer queued");
    tick();
  }
}

// ------------------------------------------------------------------ aio, io_uring

void run_aio(int rounds) {
  int fd = check(open("aio.data", O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600), "open");
  char data[4096];
  for (std::size_t i = 0; i < sizeof data; ++i) data[i] = static_cast<char>('a' + i % 26);
  if (write(fd, data, sizeof data) != static_cast<ssize_t>(sizeof data)) die("write");
  aio_context_t ctx = 0;
  check(static_cast<int>(syscall(SYS_io_setup, 32, &ctx)), "io_setup");
  for (int r = 1; r <= rounds; ++r) {
    static char buf[4096];
    iocb cb{};
    cb.aio_lio_opcode = IOCB_CMD_PREAD;
    cb.aio_fildes = static_cast<std::uint32_t>(fd);
    cb.aio_buf = reinterpret_cast<std::uint64_t>(buf);
    cb.aio_nbytes = sizeof buf;
    cb.aio_data = static_cast<std::uint64_t>(r);
    iocb* cbs[1] = {&cb};
    if (syscall(SYS_io_submit, ctx, 1, cbs) != 1) die("io_submit");
    io_event ev{};
    if (syscall(SYS_io_getevents, ctx, 1, 1, &ev, nullptr) != 1) die("io_getevents");
    if (ev.data != static_cast<std::uint64_t>(r) || ev.res != sizeof buf ||
        std::memcmp(buf, data, sizeof buf) != 0)
      fail("aio read wrong: res " + str(static_cast<long>(ev.res)));
    line("round " + str(r) + " aio read");
    tick();
  }
}

void run_io_uring(int rounds) {
  io_uring_params p{};
  int fd = check(static_cast<int>(syscall(SYS_io_uring_setup, 8, &p)), "io_uring_setup");
  std::size_t sq_len = p.sq_off.array + p.sq_entries * sizeof(unsigned);
  std::size_t cq_len = p.cq_off.cqes + p.cq_entries * sizeof(io_uring_cqe);
  std::size_t ring_len = sq_len > cq_len ? sq_len : cq_len;  // IORING_FEAT_SINGLE_MMAP
  auto* ring = static_cast<char*>(mmap(nullptr, ring_len, PROT_READ | PROT_WRITE,
                                       MAP_SHARED | MAP_POPULATE, fd, IORING_OFF_SQ_RING));
  if (ring == MAP_FAILED) die("mmap rings");
  auto* sqes = static_cast<io_uring_sqe*>(mmap(nullptr, p.sq_entries * sizeof(io_uring_sqe),
                                               PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE,
                                               fd, IORING_OFF_SQES));
  if (sqes == MAP_FAILED) die("mmap sqes");
  auto* sq_tail = reinterpret_cast<unsigned*>(ring + p.sq_off.tail);
  auto* sq_array = reinterpret_cast<unsigned*>(ring + p.sq_off.array);
  auto* cq_head = reinterpret_cast<unsigned*>(ring + p.cq_off.head);
  auto* cqes = reinterpret_cast<io_uring_cqe*>(ring + p.cq_off.cqes);
  for (int r = 1; r <= rounds; ++r) {
    unsigned tail = *sq_tail;
    unsigned i = tail & (p.sq_entries - 1);
    sqes[i] = io_uring_sqe{};
    sqes[i].opcode = IORING_OP_NOP;
    sqes[i].user_data = static_cast<std::uint64_t>(r);
    sq_array[i] = i;
    __atomic_store_n(sq_tail, tail + 1, __ATOMIC_RELEASE);
    if (syscall(SYS_io_uring_enter, fd, 1, 1, IORING_ENTER_GETEVENTS, nullptr, 0) != 1)
      die("io_uring_enter");
    unsigned head = __atomic_load_n(cq_head, __ATOMIC_ACQUIRE);
    io_uring_cqe& c = cqes[head & (p.cq_entries - 1)];
    if (c.user_data != static_cast<std::uint64_t>(r) || c.res != 0) fail("io_uring NOP wrong");
    __atomic_store_n(cq_head, head + 1, __ATOMIC_RELEASE);
    line("round " + str(r) + " io_uring nop");
    tick();
  }
}

// ------------------------------------------------------------------ fanotify

void run_fanotify(int rounds) {
  int fa = check(fanotify_init(FAN_CLASS_NOTIF | FAN_REPORT_FID | FAN_CLOEXEC, O_RDONLY),
                 "fanotify_init");
  check(fanotify_mark(fa, FAN_MARK_ADD, FAN_CREATE, AT_FDCWD, "."), "fanotify_mark");
  for (int r = 1; r <= rounds; ++r) {
    const std::string name = "fan." + str(r);
    close(check(open(name.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600), "create"));
    unlink(name.c_str());
    alignas(fanotify_event_metadata) char buf[4096];
    ssize_t n = read(fa, buf, sizeof buf);
    if (n < static_cast<ssize_t>(sizeof(fanotify_event_metadata))) die("fanotify read");
    auto* m = reinterpret_cast<fanotify_event_metadata*>(buf);
    if (!(m->mask & FAN_CREATE)) fail("fanotify event without FAN_CREATE");
    line("round " + str(r) + " fanotify create");
    tick();
  }
}

}  // namespace

int main(int argc, char** argv) {
  static constexpr Kind kinds[] = {
      {"posix_timers", run_posix_timers},
      {"pidfd", run_pidfd},
      {"pidfd_exited", run_pidfd_exited},
      {"netlink", run_netlink},
      {"netlink_queued", run_netlink_queued},
      {"aio", run_aio},
      {"io_uring", run_io_uring},
      {"fanotify", run_fanotify},
      {"timer_alarm", run_timer_alarm},
      {"timer_other_cpu", run_timer_other_cpu},
      {"timer_thread_cpu", run_timer_thread_cpu},
  };
  return run_kind(argc, argv, "ckpt_misc_kind", kinds);
}
