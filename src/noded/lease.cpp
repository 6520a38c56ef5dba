#include "noded/lease.h"

#include <fcntl.h>
#include <linux/close_range.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>

#include "common/error.h"

namespace fsched::noded {

namespace {

int64_t mono_ns() {
  timespec ts{};
  ::clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

int64_t to_ns(Lease::Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

Lease::Clock::time_point from_ns(int64_t ns) {
  return Lease::Clock::time_point(std::chrono::nanoseconds(ns));
}

// Only system calls: the guard may be forked from a multi-threaded fschedd, where
// the child may call nothing that takes a lock (malloc, stdio, spdlog).
int write_freeze(const char* file, char v) {
  int fd = ::open(file, O_WRONLY | O_CLOEXEC);
  if (fd < 0) return errno;
  int rc = ::write(fd, &v, 1) == 1 ? 0 : errno;
  ::close(fd);
  return rc;
}

}  // namespace

static_assert(std::is_same_v<Lease::Clock, std::chrono::steady_clock>);

Lease::Lease(std::filesystem::path freeze_file) : freeze_file_(freeze_file.string()) {
  void* p =
      ::mmap(nullptr, sizeof(Shared), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) fail_errno("mmap of the lease page");
  shared_ = new (p) Shared{};
  shared_->expiry_ns = 0;
  shared_->frozen = 0;
  shared_->frozen_at_ns = 0;
  shared_->error = 0;
}

Lease::~Lease() {
  if (guard_ > 0) {
    ::kill(guard_, SIGKILL);
    while (::waitpid(guard_, nullptr, 0) < 0 && errno == EINTR) {
    }
  }
  if (shared_) ::munmap(shared_, sizeof(Shared));
}

void Lease::guard_main(Shared* s, const char* freeze_file, pid_t parent) {
  ::prctl(PR_SET_NAME, "fschedd-guard");
  ::prctl(PR_SET_PDEATHSIG, SIGKILL);
  if (::getppid() != parent) ::_exit(0);  // fschedd died before the line above
  // Signals meant for fschedd's terminal or process group must not end the guard:
  // it ends with fschedd.
  struct sigaction ign {};
  ign.sa_handler = SIG_IGN;
  for (int sig : {SIGINT, SIGTERM, SIGHUP, SIGPIPE, SIGUSR1, SIGUSR2})
    ::sigaction(sig, &ign, nullptr);
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
  // fschedd's sockets and locks are not the guard's to hold.
  ::syscall(SYS_close_range, 3U, ~0U, 0U);
  const timespec poll{0, std::chrono::nanoseconds(kPollInterval).count()};
  for (;;) {
    int64_t now = mono_ns();
    if (now >= s->expiry_ns.load() && s->frozen.load() == 0) {
      int err = write_freeze(freeze_file, '1');
      s->error = err;
      if (err == 0) {
        s->frozen_at_ns = now;
        s->frozen = 1;
        // A renewal between the expiry read above and the write: fschedd renews only
        // after killing the stale runs, so the jobs may run again.
        if (s->expiry_ns.load() > mono_ns()) {
          write_freeze(freeze_file, '0');
          s->frozen = 0;
        }
      }
    }
    ::nanosleep(&poll, nullptr);
  }
}

void Lease::start_guard() {
  pid_t parent = ::getpid();
  // Everything the child needs is prepared before the fork.
  Shared* s = shared_;
  const char* file = freeze_file_.c_str();
  pid_t pid = ::fork();
  if (pid < 0) fail_errno("cannot fork the lease guard");
  if (pid == 0) guard_main(s, file, parent);
  guard_ = pid;
}

bool Lease::ensure_guard() {
  if (guard_ > 0) {
    int st = 0;
    pid_t w = ::waitpid(guard_, &st, WNOHANG);
    if (w == 0) return false;  // alive
  }
  start_guard();
  return true;
}

void Lease::renew(Clock::time_point sent, std::chrono::seconds seconds) {
  shared_->expiry_ns = to_ns(sent + seconds);
}

Lease::Clock::time_point Lease::expiry() const { return from_ns(shared_->expiry_ns.load()); }

bool Lease::frozen() const { return shared_->frozen.load() != 0; }

Lease::Clock::time_point Lease::frozen_at() const { return from_ns(shared_->frozen_at_ns.load()); }

int Lease::guard_errno() const { return shared_->error.load(); }

bool Lease::thaw() {
  bool was = frozen();
  if (!was) {
    // Frozen by an earlier fschedd's guard (the freeze outlives it): thawed once this
    // fschedd holds a lease again.
    std::ifstream in(freeze_file_);
    int v = 0;
    if (!(in >> v) || v == 0) return false;
    was = true;
  }
  if (int err = write_freeze(freeze_file_.c_str(), '0'))
    throw Error("cannot thaw the jobs: write 0 to " + freeze_file_, err);
  shared_->frozen = 0;
  return was;
}

}  // namespace fsched::noded
