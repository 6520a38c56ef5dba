// The network lock and its guardian (netlock.h).
#include "ckpt/netlock.h"

#include <fcntl.h>
#include <linux/filter.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstring>
#include <ctime>

#include "common/error.h"

#ifndef TCP_REPAIR_OFF
#define TCP_REPAIR_OFF 0
#endif

namespace fsched::ckpt {
namespace {

constexpr char kAdd = 'A';      // dumper -> guardian: a socket follows (SCM_RIGHTS)
constexpr char kDismiss = 'Q';  // dumper -> guardian: end without touching the sockets
constexpr char kHold = 'H';     // dumper -> guardian: the job is dead; hold (+ u32 seconds)
constexpr char kHeld = 'F';     // guardian -> restore: a held socket follows (SCM_RIGHTS)
constexpr char kThaw = 'T';     // dumper -> guardian: the job's cgroup.freeze follows (SCM_RIGHTS)
constexpr char kKill = 'K';     // dumper -> guardian: the job is being killed; kill it too

bool send_msg(int chan, const void* data, std::size_t len, int fd) {
  iovec iov{const_cast<void*>(data), len};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))]{};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (fd >= 0) {
    msg.msg_control = cbuf;
    msg.msg_controllen = sizeof cbuf;
    cmsghdr* c = CMSG_FIRSTHDR(&msg);
    c->cmsg_level = SOL_SOCKET;
    c->cmsg_type = SCM_RIGHTS;
    c->cmsg_len = CMSG_LEN(sizeof(int));
    std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  }
  for (;;) {
    ssize_t r = ::sendmsg(chan, &msg, MSG_NOSIGNAL);
    if (r == static_cast<ssize_t>(len)) return true;
    if (r < 0 && errno == EINTR) continue;
    return false;
  }
}

bool send_tag(int chan, char tag, int fd) { return send_msg(chan, &tag, 1, fd); }

// The receiving side of send_msg: up to `len` bytes into `data` and, when the message
// carried one, its fd in *fd (else -1). Returns recvmsg(2)'s result. Async-signal-safe.
ssize_t recv_msg(int chan, void* data, std::size_t len, int* fd) {
  iovec iov{data, len};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  *fd = -1;
  ssize_t r = ::recvmsg(chan, &msg, MSG_CMSG_CLOEXEC);
  cmsghdr* c = r > 0 ? CMSG_FIRSTHDR(&msg) : nullptr;
  if (c && c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS &&
      c->cmsg_len == CMSG_LEN(sizeof(int)))
    std::memcpy(fd, CMSG_DATA(c), sizeof *fd);
  return r;
}

// The address of abstract socket name `name` (without its leading NUL).
sockaddr_un abstract_addr(const std::string& name, socklen_t& len) {
  sockaddr_un sa{};
  sa.sun_family = AF_UNIX;
  std::memcpy(sa.sun_path + 1, name.data(), name.size());
  len = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + 1 + name.size());
  return sa;
}

void close_all_but(int a, int b, int c) {
  int keep[3] = {a, b, c};
  for (int i = 0; i < 3; ++i)
    for (int j = i + 1; j < 3; ++j)
      if (keep[j] < keep[i]) std::swap(keep[i], keep[j]);
  unsigned from = 3;
  for (int k : keep) {
    if (k > static_cast<int>(from)) ::close_range(from, static_cast<unsigned>(k - 1), 0);
    if (k >= static_cast<int>(from)) from = static_cast<unsigned>(k + 1);
  }
  ::close_range(from, ~0U, 0);
}

bool send_tag(int chan, char tag, int fd);
long now_ms() {
  timespec t{};
  ::clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec * 1000L + t.tv_nsec / 1000000L;
}

// Held sockets wait for a restore: to the first root client of the listener, each is
// sent, then the guardian ends. When `hold_s` pass first, closing them is the end.
[[noreturn]] void hold_for_restore(int lsn, const int* slots, std::size_t n, unsigned hold_s) {
  const long deadline = now_ms() + static_cast<long>(hold_s) * 1000L;
  for (;;) {
    const long left = deadline - now_ms();
    if (left <= 0) ::_exit(0);
    pollfd p{lsn, POLLIN, 0};
    if (::poll(&p, 1, static_cast<int>(std::min(left, 60000L))) <= 0) continue;
    int c = ::accept4(lsn, nullptr, nullptr, SOCK_CLOEXEC);
    if (c < 0) continue;
    ucred cr{};
    socklen_t cl = sizeof cr;
    if (::getsockopt(c, SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0 || cr.uid != 0) {
      ::close(c);
      continue;
    }
    for (std::size_t i = 0; i < n; ++i) send_tag(c, kHeld, slots[i]);
    ::_exit(0);  // the client reads to the end of the connection
  }
}

// The guardian's whole life, in the child of fork(2): async-signal-safe calls only,
// `slots` allocated by the parent (the dumper may have other threads, whose locks a
// child must not take).
[[noreturn]] void guard(int chan, int job, int lsn, int* slots, int* reuse, std::size_t cap,
                        unsigned hold_s) {
  sigset_t all;
  ::sigfillset(&all);
  ::sigprocmask(SIG_BLOCK, &all, nullptr);  // a Ctrl-C to the dumper's group too
  int null = ::open("/dev/null", O_RDWR | O_CLOEXEC);
  if (null >= 0)
    for (int std_fd = 0; std_fd < 3; ++std_fd) ::dup2(null, std_fd);
  close_all_but(chan, job, lsn);
  ::prctl(PR_SET_NAME, "fsched-netlock", 0, 0, 0);
  std::size_t n = 0;
  int thaw = -1;         // cgroup.freeze of the job's cgroup (cgroup_freeze.h), once sent
  bool killing = false;  // kKill came: the job dies whatever becomes of the dumper
  auto thaw_job = [&thaw] {
    if (thaw >= 0) [[maybe_unused]]
      ssize_t w = ::pwrite(thaw, "0", 1, 0);
  };
  for (;;) {
    char buf[8]{};
    int got = -1;
    ssize_t r = recv_msg(chan, buf, sizeof buf, &got);
    if (r < 0 && errno == EINTR) continue;
    if (r >= 1) {
      if (buf[0] == kAdd && got >= 0 && n < cap) {
        // Its SO_REUSEADDR now, before the dump's repair mode takes it.
        socklen_t rl = sizeof reuse[n];
        reuse[n] = 0;
        ::getsockopt(got, SOL_SOCKET, SO_REUSEADDR, &reuse[n], &rl);
        slots[n++] = got;
        continue;
      }
      if (buf[0] == kThaw && got >= 0 && thaw < 0) {
        thaw = got;
        continue;
      }
      if (got >= 0) ::close(got);
      if (buf[0] == kDismiss) ::_exit(0);
      if (buf[0] == kKill) {
        // Sent by the guardian too, so that the kill does not hang on the dumper
        // living through its kill(2): a job that dies takes its sockets with it.
        killing = true;
        ::syscall(SYS_pidfd_send_signal, job, SIGKILL, nullptr, 0U);
        continue;
      }
      if (buf[0] == kHold && r == 5) {
        std::uint32_t s = 0;
        std::memcpy(&s, buf + 1, sizeof s);
        ::close(chan);
        thaw_job();
        hold_for_restore(lsn, slots, n, s);
      }
      continue;
    }
    // The dumper is gone without a word. A living job's sockets are given back; a dead
    // or dying job's wait for a restore, as if the dumper had said so. A job being
    // killed is not dead yet (its init exits last, after the rest of its namespace):
    // taken out of repair mode, its sockets would send the peer a reset as they close.
    pollfd p{job, POLLIN, 0};
    if (killing || ::poll(&p, 1, 0) == 1) {
      thaw_job();
      hold_for_restore(lsn, slots, n, hold_s);
    }
    for (std::size_t i = 0; i < n; ++i) {
      int off = TCP_REPAIR_OFF, zero = 0;
      if (::setsockopt(slots[i], IPPROTO_TCP, TCP_REPAIR, &off, sizeof off) == 0)
        ::setsockopt(slots[i], SOL_SOCKET, SO_REUSEADDR, &reuse[i], sizeof reuse[i]);
      ::setsockopt(slots[i], SOL_SOCKET, SO_DETACH_FILTER, &zero, sizeof zero);
    }
    // Only now may the job's threads, let go by the dead dumper, run (cgroup_freeze.h).
    thaw_job();
    ::_exit(0);
  }
}

}  // namespace

NetLock::~NetLock() {
  if (done_ || guardian_ < 0) return;
  // Neither released nor held (an exception on the way): the guardian sees the
  // channel close and gives back what the job still holds, as if the dumper had died.
  done_ = true;
  chan_.reset();
  ::waitpid(guardian_, nullptr, 0);
}

void NetLock::start_guardian() {
  UniqueFd job(static_cast<int>(::syscall(SYS_pidfd_open, job_init_, 0)));
  if (!job) fail_errno("network lock: pidfd_open of the job's init {}", job_init_);
  int sv[2];
  if (::socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0)
    fail_errno("network lock: socketpair");
  UniqueFd mine(sv[0]), theirs(sv[1]);
  // The hand-over point: an abstract name nobody can guess before it is bound.
  unsigned char rnd[16];
  if (::getrandom(rnd, sizeof rnd, 0) != static_cast<ssize_t>(sizeof rnd))
    fail_errno("network lock: getrandom");
  std::string name = "fsched-netlock-";
  for (unsigned char b : rnd) name += fmt::format("{:02x}", b);
  UniqueFd lsn(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!lsn) fail_errno("network lock: socket");
  socklen_t len = 0;
  const sockaddr_un sa = abstract_addr(name, len);
  if (::bind(lsn.get(), reinterpret_cast<const sockaddr*>(&sa), len) < 0 ||
      ::listen(lsn.get(), 4) < 0)
    fail_errno("network lock: binding @{}", name);
  std::vector<int> slots(kMaxSockets, -1), reuse(kMaxSockets, 0);
  pid_t pid = ::fork();
  if (pid < 0) fail_errno("network lock: fork of the guardian");
  if (pid == 0)
    guard(theirs.get(), job.get(), lsn.get(), slots.data(), reuse.data(), slots.size(), hold_s_);
  guardian_ = pid;
  chan_ = std::move(mine);
  name_ = std::move(name);
}

void NetLock::add(int fd, const std::string& who) {
  if (done_) fail("{}: the network lock has ended", who);
  if (fds_.size() >= kMaxSockets)
    fail_unsupported("{}: a job with more than {} TCP sockets is not supported", who, kMaxSockets);
  int locked_filter = 0;
  socklen_t ll = sizeof locked_filter;
  if (::getsockopt(fd, SOL_SOCKET, SO_LOCK_FILTER, &locked_filter, &ll) == 0 && locked_filter)
    fail_unsupported(
        "{}: SO_LOCK_FILTER is set: the dump cannot lock the socket against incoming data, "
        "which is not supported",
        who);
  if (guardian_ < 0) start_guardian();
  UniqueFd ref(::fcntl(fd, F_DUPFD_CLOEXEC, 3));
  if (!ref) fail_errno("{}: dup", who);
  if (!send_tag(chan_.get(), kAdd, ref.get()))
    fail_errno("{}: handing the socket to the network lock's guardian", who);
  sock_filter drop{BPF_RET | BPF_K, 0, 0, 0};
  sock_fprog prog{1, &drop};
  if (::setsockopt(fd, SOL_SOCKET, SO_ATTACH_FILTER, &prog, sizeof prog) < 0)
    fail_errno("{}: locking it against incoming packets (SO_ATTACH_FILTER)", who);
  fds_.push_back(std::move(ref));
}

void NetLock::set_thaw(int freeze_file, const std::string& who) {
  if (done_) fail("{}: the network lock has ended", who);
  if (guardian_ < 0) fail("{}: the network lock holds no socket yet", who);
  if (!send_tag(chan_.get(), kThaw, freeze_file))
    fail_errno("{}: handing the job's cgroup.freeze to the network lock's guardian", who);
}

void NetLock::end(char tag, unsigned hold_s) noexcept {
  done_ = true;
  if (guardian_ < 0) return;
  char msg[5] = {tag};
  std::uint32_t s = hold_s;
  std::memcpy(msg + 1, &s, sizeof s);
  send_msg(chan_.get(), msg, tag == kHold ? sizeof msg : 1, -1);
  chan_.reset();
  // A dismissed guardian ends at once; a holding one lives on, reparented when this
  // process ends. (Not waited for: SIGCHLD's default leaves no zombie once we exit.)
  if (tag == kDismiss) ::waitpid(guardian_, nullptr, 0);
  guardian_ = -1;
}

void NetLock::release() noexcept {
  if (done_) return;
  for (auto& f : fds_) {
    int zero = 0;
    ::setsockopt(f.get(), SOL_SOCKET, SO_DETACH_FILTER, &zero, sizeof zero);
  }
  fds_.clear();
  end(kDismiss, 0);
}

void NetLock::killing() noexcept {
  if (done_ || guardian_ < 0) return;
  // Not sent: the guardian is gone, and there is nothing left to hold anyway.
  send_msg(chan_.get(), &kKill, 1, -1);
}

void NetLock::hold(unsigned hold_s) noexcept {
  if (done_) return;
  fds_.clear();
  end(kHold, hold_s);
}

std::map<std::uint64_t, UniqueFd> take_held_sockets(const std::string& name) {
  std::map<std::uint64_t, UniqueFd> held;
  if (name.empty() || name.size() > sizeof(sockaddr_un::sun_path) - 1) return held;
  UniqueFd c(::socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!c) fail_errno("network lock: socket");
  socklen_t len = 0;
  const sockaddr_un sa = abstract_addr(name, len);
  if (::connect(c.get(), reinterpret_cast<const sockaddr*>(&sa), len) < 0) return held;
  ucred cr{};
  socklen_t cl = sizeof cr;
  if (::getsockopt(c.get(), SOL_SOCKET, SO_PEERCRED, &cr, &cl) < 0 || cr.uid != 0) return held;
  for (;;) {
    pollfd p{c.get(), POLLIN, 0};
    int pr = ::poll(&p, 1, 5000);
    if (pr < 0 && errno == EINTR) continue;
    if (pr == 0) fail("network lock: the guardian at @{} stopped answering", name);
    char tag = 0;
    int fd = -1;
    ssize_t r = recv_msg(c.get(), &tag, 1, &fd);
    if (r < 0 && errno == EINTR) continue;
    // A guardian ending as we connected (it had handed them to another) resets us.
    if (r == 0 || (r < 0 && errno == ECONNRESET && held.empty())) return held;
    if (r < 0) fail_errno("network lock: reading from the guardian at @{}", name);
    UniqueFd got(fd);
    struct stat st {};
    if (tag != kHeld || !got || ::fstat(got.get(), &st) < 0 || !S_ISSOCK(st.st_mode))
      fail("network lock: the guardian at @{} sent something other than a socket", name);
    held.emplace(st.st_ino, std::move(got));
  }
}

}  // namespace fsched::ckpt
