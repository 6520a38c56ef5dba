// ckpt_lock_kind: one process that holds one kind of file lock or fd-owner state, for
// checkpoint/restore tests that name the kind that broke. Output depends only on the
// arguments.
//
//   ckpt_lock_kind KIND ROUNDS [TICK_MS]
//
// Each round prints one line and sleeps TICK_MS (default 50). The lock kinds fork a
// checker child, a SECOND process of the job, that each round tests from outside the
// holder that every lock is still held by it (and no more):
//   posix   fcntl(2) F_SETLK write locks on bytes 0-99 and 200-299, a read lock on
//           1000-1999 and a write lock from 4096 to EOF of posix.lock; the child checks
//           each with F_GETLK (type, range and the holder's pid) and a gap as free
//   ofd     F_OFD_SETLK write lock 0-99 and read lock 500-599 on ofd.lock; the child
//           checks them with F_OFD_GETLK through an open file description of its own
//   flock   flock(2) LOCK_EX on flock.a and LOCK_SH on flock.b; the child tries LOCK_NB
//           locks through its own opens (refused on a, shared only on b)
//   flock_mapped  flock(2) LOCK_EX on flock.m, which is then mapped MAP_SHARED and its fd
//           closed, as the JVM does with its perf data file: the lock lives on through
//           the mapping's open file description; the child checks it is still refused
//           to others, and the holder writes through the mapping each round
//   lease   F_SETLEASE read lease on lease.r, write lease on lease.w (files the job
//           made); the holder checks F_GETLEASE and that no break (SIGIO) came, the
//           child finds both ACTIVE in /proc/locks by inode (opening them would break
//           them)
//   fown    signal-driven I/O: a socket pair end owned by the process (F_SETOWN_EX
//           F_OWNER_PID) with signal SIGUSR1, and a pipe's read end owned by a second
//           thread (F_OWNER_TID) with SIGRTMIN, both O_ASYNC; each round writes to both
//           and the owner must receive the signal, with si_fd naming the fd
//   lease_breaking  a read lease whose break the child started (an open for writing
//           with O_NONBLOCK): held in that state the whole run, released at the end;
//           a dump must refuse it
//   flock_dir  flock(2) LOCK_EX on the directory lockdir (made here): a dump must
//           refuse it (a directory is reopened as a new open file description)
//   ofd_mapped  F_OFD_SETLK write lock on all of ofd.m, which is then mapped MAP_SHARED
//           and its fd closed: the lock lives on through the mapping's open file
//           description, which /proc/locks cannot tell from another process's OFD lock
//           (pid -1); the child checks it is still held, the holder writes through the
//           mapping each round; a dump must refuse it
//
// Exit status 0; 1 with a line "FAIL ..." saying what failed.
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <sstream>
#include <string>

#include "kind_prog.h"

namespace {

using namespace kindprog;

int open_file(const char* path, int flags) {
  int fd = open(path, flags | O_CLOEXEC, 0600);
  if (fd < 0) die(std::string("open ") + path);
  return fd;
}

// ---- the checker child ----------------------------------------------------------------

// A child that runs `check` (returning "" or what is wrong) whenever the parent asks,
// and answers; the parent fails with the child's message.
class Checker {
 public:
  explicit Checker(std::function<std::string()> check) {
    int cmd[2], rep[2];
    if (pipe2(cmd, O_CLOEXEC) < 0 || pipe2(rep, O_CLOEXEC) < 0) die("pipe2");
    pid_ = fork();
    if (pid_ < 0) die("fork");
    if (pid_ == 0) {
      close(cmd[1]);
      close(rep[0]);
      char c;
      for (;;) {
        ssize_t n = read(cmd[0], &c, 1);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) _exit(0);
        std::string what = check();
        what += '\n';
        if (write(rep[1], what.data(), what.size()) < 0) _exit(1);
      }
    }
    close(cmd[0]);
    close(rep[1]);
    cmd_ = cmd[1];
    rep_ = rep[0];
  }
  void check(int round) {
    char c = 'c';
    while (write(cmd_, &c, 1) < 0)
      if (errno != EINTR) die("write to the checker");
    std::string got;
    while (got.empty() || got.back() != '\n') {
      char buf[256];
      ssize_t n = read(rep_, buf, sizeof buf);
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) die("read from the checker");
      got.append(buf, static_cast<std::size_t>(n));
    }
    got.pop_back();
    if (!got.empty()) fail("round " + std::to_string(round) + ": checker: " + got);
  }
  void finish() {
    close(cmd_);
    int st;
    if (waitpid(pid_, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0) fail("checker died");
  }

 private:
  pid_t pid_ = -1;
  int cmd_ = -1, rep_ = -1;
};

void rounds_with(Checker& c, int rounds, const char* kind, const std::function<void(int)>& own) {
  for (int r = 1; r <= rounds; ++r) {
    if (own) own(r);
    c.check(r);
    line(std::string(kind) + " " + std::to_string(r) + " held");
    tick();
  }
  c.finish();
}

// ---- posix, ofd --------------------------------------------------------------------

struct Range {
  off_t start, len;  // len 0: to EOF
  short type;        // F_RDLCK, F_WRLCK; F_UNLCK: must be free
};

void set_lock(int fd, int cmd, const Range& r, const char* what) {
  struct flock fl {};
  fl.l_type = r.type;
  fl.l_whence = SEEK_SET;
  fl.l_start = r.start;
  fl.l_len = r.len;
  if (fcntl(fd, cmd, &fl) < 0) die(what);
}

// What F_GETLK / F_OFD_GETLK says of a write lock on `r` through fd: "" if it is
// as expected (held by `pid` with r's range and type, or free if r.type is F_UNLCK).
std::string probe(int fd, int cmd, const Range& r, pid_t pid) {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  fl.l_start = r.start;
  fl.l_len = r.len;
  if (fcntl(fd, cmd, &fl) < 0) return std::string("F_GETLK: ") + std::strerror(errno);
  std::ostringstream got;
  got << "bytes " << r.start << "+" << r.len << ": type " << fl.l_type << " start " << fl.l_start
      << " len " << fl.l_len << " pid " << fl.l_pid;
  if (r.type == F_UNLCK) return fl.l_type == F_UNLCK ? "" : got.str() + " (should be free)";
  if (fl.l_type != r.type || fl.l_start != r.start || fl.l_len != r.len || fl.l_pid != pid)
    return got.str() + " (want type " + std::to_string(r.type) + " pid " + std::to_string(pid) +
           ")";
  return "";
}

void run_posix(int rounds) {
  int fd = open_file("posix.lock", O_RDWR | O_CREAT | O_TRUNC);
  if (ftruncate(fd, 8192) < 0) die("ftruncate");
  const Range held[] = {
      {0, 100, F_WRLCK}, {200, 100, F_WRLCK}, {1000, 1000, F_RDLCK}, {4096, 0, F_WRLCK}};
  for (auto& r : held) set_lock(fd, F_SETLK, r, "F_SETLK");
  const pid_t holder = getpid();
  Checker c([&] {
    // The inherited fd: a POSIX lock belongs to the process, not to the description.
    for (auto& r : held)
      if (auto e = probe(fd, F_GETLK, r, holder); !e.empty()) return e;
    return probe(fd, F_GETLK, Range{100, 100, F_UNLCK}, holder) +
           probe(fd, F_GETLK, Range{2000, 2096, F_UNLCK}, holder);
  });
  rounds_with(c, rounds, "posix", nullptr);
}

void run_ofd(int rounds) {
  int fd = open_file("ofd.lock", O_RDWR | O_CREAT | O_TRUNC);
  const Range held[] = {{0, 100, F_WRLCK}, {500, 100, F_RDLCK}};
  for (auto& r : held) set_lock(fd, F_OFD_SETLK, r, "F_OFD_SETLK");
  Checker c([&] {
    // A description of its own: the inherited one holds the locks.
    static int own = open_file("ofd.lock", O_RDWR);
    for (auto& r : held)
      if (auto e = probe(own, F_OFD_GETLK, r, -1); !e.empty()) return e;
    return probe(own, F_OFD_GETLK, Range{100, 400, F_UNLCK}, -1);
  });
  rounds_with(c, rounds, "ofd", nullptr);
}

// ---- flock -------------------------------------------------------------------------

void run_flock(int rounds) {
  int a = open_file("flock.a", O_RDWR | O_CREAT | O_TRUNC);
  int b = open_file("flock.b", O_RDONLY | O_CREAT | O_TRUNC);
  if (flock(a, LOCK_EX | LOCK_NB) < 0) die("flock(a, LOCK_EX)");
  if (flock(b, LOCK_SH | LOCK_NB) < 0) die("flock(b, LOCK_SH)");
  Checker c([] {
    static int own_a = open_file("flock.a", O_RDONLY), own_b = open_file("flock.b", O_RDONLY);
    if (flock(own_a, LOCK_SH | LOCK_NB) == 0) return std::string("flock.a: LOCK_SH granted");
    if (errno != EWOULDBLOCK) return std::string("flock.a: ") + std::strerror(errno);
    if (flock(own_b, LOCK_EX | LOCK_NB) == 0) return std::string("flock.b: LOCK_EX granted");
    if (errno != EWOULDBLOCK) return std::string("flock.b: ") + std::strerror(errno);
    if (flock(own_b, LOCK_SH | LOCK_NB) < 0)
      return std::string("flock.b: LOCK_SH refused: ") + std::strerror(errno);
    if (flock(own_b, LOCK_UN) < 0) return std::string("flock.b: LOCK_UN: ") + std::strerror(errno);
    return std::string();
  });
  rounds_with(c, rounds, "flock", nullptr);
}

void run_flock_mapped(int rounds) {
  int fd = open_file("flock.m", O_RDWR | O_CREAT | O_TRUNC);
  if (ftruncate(fd, 4096) < 0) die("ftruncate flock.m");
  if (flock(fd, LOCK_EX | LOCK_NB) < 0) die("flock(flock.m, LOCK_EX)");
  void* m = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) die("mmap flock.m");
  close(fd);
  auto* counter = static_cast<volatile int*>(m);
  Checker c([] {
    static int own = open_file("flock.m", O_RDONLY);
    if (flock(own, LOCK_SH | LOCK_NB) == 0) return std::string("flock.m: LOCK_SH granted");
    if (errno != EWOULDBLOCK) return std::string("flock.m: ") + std::strerror(errno);
    return std::string();
  });
  rounds_with(c, rounds, "flock_mapped", [&](int r) {
    if (*counter != r - 1) fail("flock.m holds " + std::to_string(*counter));
    *counter = r;
  });
}

void run_ofd_mapped(int rounds) {
  int fd = open_file("ofd.m", O_RDWR | O_CREAT | O_TRUNC);
  if (ftruncate(fd, 4096) < 0) die("ftruncate ofd.m");
  const Range all{0, 0, F_WRLCK};
  set_lock(fd, F_OFD_SETLK, all, "F_OFD_SETLK");
  void* m = mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) die("mmap ofd.m");
  close(fd);
  auto* counter = static_cast<volatile int*>(m);
  Checker c([&] {
    static int own = open_file("ofd.m", O_RDWR);
    return probe(own, F_OFD_GETLK, all, -1);
  });
  rounds_with(c, rounds, "ofd_mapped", [&](int r) {
    if (*counter != r - 1) fail("ofd.m holds " + std::to_string(*counter));
    *counter = r;
  });
}

// ---- leases ------------------------------------------------------------------------

volatile sig_atomic_t g_sigio = 0;
void on_sigio(int) { g_sigio = 1; }

void catch_sigio() {
  struct sigaction sa {};
  sa.sa_handler = on_sigio;
  sigemptyset(&sa.sa_mask);
  if (sigaction(SIGIO, &sa, nullptr) < 0) die("sigaction(SIGIO)");
}

ino_t inode_of(const char* path) {
  struct stat st {};
  if (stat(path, &st) < 0) die(std::string("stat ") + path);
  return st.st_ino;
}

// The state word and type of the lease on inode `ino` in /proc/locks ("" if none).
std::string lease_in_proc_locks(ino_t ino) {
  std::ifstream in("/proc/locks");
  std::string l;
  const std::string tail = ":" + std::to_string(ino) + " ";
  while (std::getline(in, l)) {
    std::istringstream w(l);
    std::string id, kind, state, type, pid, dev;
    w >> id >> kind >> state >> type >> pid >> dev;
    if (kind == "LEASE" && (dev + " ").size() > tail.size() &&
        (dev + " ").compare((dev + " ").size() - tail.size(), tail.size(), tail) == 0)
      return state + " " + type;
  }
  return "";
}

void run_lease(int rounds) {
  catch_sigio();
  close(open_file("lease.r", O_WRONLY | O_CREAT | O_TRUNC));
  close(open_file("lease.w", O_WRONLY | O_CREAT | O_TRUNC));
  int r = open_file("lease.r", O_RDONLY), w = open_file("lease.w", O_RDWR);
  if (fcntl(r, F_SETLEASE, F_RDLCK) < 0) die("F_SETLEASE F_RDLCK");
  if (fcntl(w, F_SETLEASE, F_WRLCK) < 0) die("F_SETLEASE F_WRLCK");
  const ino_t ri = inode_of("lease.r"), wi = inode_of("lease.w");
  Checker c([&] {
    std::string a = lease_in_proc_locks(ri), b = lease_in_proc_locks(wi);
    if (a != "ACTIVE READ" || b != "ACTIVE WRITE")
      return "/proc/locks: lease.r \"" + a + "\", lease.w \"" + b + "\"";
    return std::string();
  });
  rounds_with(c, rounds, "lease", [&](int round) {
    if (g_sigio) fail("round " + std::to_string(round) + ": a lease was broken (SIGIO)");
    if (fcntl(r, F_GETLEASE) != F_RDLCK || fcntl(w, F_GETLEASE) != F_WRLCK)
      fail("round " + std::to_string(round) + ": F_GETLEASE " +
           std::to_string(fcntl(r, F_GETLEASE)) + " " + std::to_string(fcntl(w, F_GETLEASE)));
  });
  if (fcntl(r, F_SETLEASE, F_UNLCK) < 0 || fcntl(w, F_SETLEASE, F_UNLCK) < 0) die("F_UNLCK");
}

void run_lease_breaking(int rounds) {
  catch_sigio();
  close(open_file("lease.b", O_WRONLY | O_CREAT | O_TRUNC));
  int r = open_file("lease.b", O_RDONLY);
  if (fcntl(r, F_SETLEASE, F_RDLCK) < 0) die("F_SETLEASE F_RDLCK");
  pid_t child = fork();
  if (child < 0) die("fork");
  if (child == 0) {
    // Starts the break and returns at once.
    int fd = open("lease.b", O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd >= 0 || errno != EWOULDBLOCK) {
      std::printf("FAIL the open for writing of lease.b gave %d (%s), not EWOULDBLOCK\n", fd,
                  fd >= 0 ? "opened" : std::strerror(errno));
      std::fflush(stdout);
    }
    _exit(fd < 0 && errno == EWOULDBLOCK ? 0 : 1);
  }
  int st;
  pid_t w;
  while ((w = waitpid(child, &st, 0)) < 0 && errno == EINTR) {
    // the SIGIO of the break may come now
  }
  if (w < 0 || !WIFEXITED(st) || WEXITSTATUS(st) != 0)
    fail("the open for writing did not start a lease break");
  for (int i = 0; i < 1000 && !g_sigio; ++i) usleep(1000);
  if (!g_sigio) fail("no SIGIO for the lease break");
  for (int i = 1; i <= rounds; ++i) {
    line("lease_breaking " + std::to_string(i));
    tick();
  }
  if (fcntl(r, F_SETLEASE, F_UNLCK) < 0) die("F_SETLEASE F_UNLCK");
}

void run_flock_dir(int rounds) {
  if (mkdir("lockdir", 0700) < 0 && errno != EEXIST) die("mkdir lockdir");
  int d = open_file("lockdir", O_RDONLY | O_DIRECTORY);
  if (flock(d, LOCK_EX | LOCK_NB) < 0) die("flock(lockdir)");
  for (int i = 1; i <= rounds; ++i) {
    line("flock_dir " + std::to_string(i));
    tick();
  }
  if (flock(d, LOCK_UN) < 0) die("flock(LOCK_UN)");
}

// ---- fown --------------------------------------------------------------------------

int g_pipe_r = -1, g_ack_w = -1;

// The owner of the pipe's read end: takes each SIGRTMIN, reads the byte and echoes it.
void* pipe_owner(void*) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGRTMIN);
  for (;;) {
    siginfo_t si{};
    if (sigwaitinfo(&s, &si) < 0) {
      if (errno == EINTR) continue;
      die("sigwaitinfo");
    }
    if (si.si_fd != g_pipe_r) fail("SIGRTMIN with si_fd " + std::to_string(si.si_fd));
    char c;
    ssize_t n;
    while ((n = read(g_pipe_r, &c, 1)) == 1)
      if (write(g_ack_w, &c, 1) != 1) die("write ack");
  }
  return nullptr;
}

void set_owner(int fd, int type, pid_t pid, int sig) {
  f_owner_ex o{};
  o.type = static_cast<__pid_type>(type);
  o.pid = pid;
  if (fcntl(fd, F_SETOWN_EX, &o) < 0) die("F_SETOWN_EX");
  if (fcntl(fd, F_SETSIG, sig) < 0) die("F_SETSIG");
  if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_ASYNC | O_NONBLOCK) < 0) die("F_SETFL O_ASYNC");
}

void run_fown(int rounds) {
  sigset_t s;
  sigemptyset(&s);
  sigaddset(&s, SIGUSR1);
  sigaddset(&s, SIGRTMIN);
  if (pthread_sigmask(SIG_BLOCK, &s, nullptr) != 0) die("pthread_sigmask");
  int sv[2], p[2], ack[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) die("socketpair");
  if (pipe2(p, O_CLOEXEC) < 0 || pipe2(ack, O_CLOEXEC) < 0) die("pipe2");
  g_pipe_r = p[0];
  g_ack_w = ack[1];
  set_owner(sv[0], F_OWNER_PID, getpid(), SIGUSR1);
  pid_t tid = 0;
  int tidpipe[2];
  if (pipe2(tidpipe, O_CLOEXEC) < 0) die("pipe2");
  pthread_t t;
  if (pthread_create(
          &t, nullptr,
          [](void* arg) -> void* {
            pid_t me = static_cast<pid_t>(syscall(SYS_gettid));
            if (write(*static_cast<int*>(arg), &me, sizeof me) != sizeof me) die("write tid");
            return pipe_owner(nullptr);
          },
          &tidpipe[1]) != 0)
    die("pthread_create");
  if (read(tidpipe[0], &tid, sizeof tid) != sizeof tid) die("read tid");
  close(tidpipe[0]);
  close(tidpipe[1]);
  set_owner(p[0], F_OWNER_TID, tid, SIGRTMIN);
  sigset_t usr1;
  sigemptyset(&usr1);
  sigaddset(&usr1, SIGUSR1);
  for (int r = 1; r <= rounds; ++r) {
    char c = static_cast<char>('a' + r % 26), got = 0;
    if (write(sv[1], &c, 1) != 1) die("write socket");
    // The process owns the socket: SIGUSR1 naming it (waits are retried across a
    // checkpoint; 20 s without the signal is a failure).
    siginfo_t si{};
    timespec one{1, 0};
    int tries = 0;
    while (sigtimedwait(&usr1, &si, &one) < 0) {
      if ((errno != EAGAIN && errno != EINTR) || ++tries > 20)
        fail("round " + std::to_string(r) + ": no SIGUSR1 for the socket");
    }
    if (si.si_fd != sv[0]) fail("SIGUSR1 with si_fd " + std::to_string(si.si_fd));
    if (read(sv[0], &got, 1) != 1 || got != c) fail("socket byte");
    if (write(p[1], &c, 1) != 1) die("write pipe");
    // The thread owns the pipe: it echoes the byte once its SIGRTMIN came.
    pollfd pf{ack[0], POLLIN, 0};
    tries = 0;
    while (poll(&pf, 1, 1000) <= 0)
      if (++tries > 20) fail("round " + std::to_string(r) + ": no SIGRTMIN for the pipe's owner");
    if (read(ack[0], &got, 1) != 1 || got != c) fail("ack byte");
    line("fown " + std::to_string(r) + " signalled");
    tick();
  }
}

}  // namespace

int main(int argc, char** argv) {
  static const Kind kKinds[] = {
      {"posix", run_posix},
      {"ofd", run_ofd},
      {"flock", run_flock},
      {"lease", run_lease},
      {"fown", run_fown},
      {"lease_breaking", run_lease_breaking},
      {"flock_dir", run_flock_dir},
      {"flock_mapped", run_flock_mapped},
      {"ofd_mapped", run_ofd_mapped},
  };
  return run_kind(argc, argv, "ckpt_lock_kind", kKinds);
}
