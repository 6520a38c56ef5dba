// Event fds: eventfd(2), epoll(7), timerfd_create(2) and signalfd(2) objects, as used
// by event loops (Python's asyncio, libuv, Go). Their state is read from
// /proc/PID/fdinfo (proc(5)); on restore each is created again inside the process and
// epoll instances re-register their targets once all the process's fds exist.
#include "ckpt/eventfds.h"

#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <unistd.h>

#include <cstring>
#include <sstream>

#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

// "it_value: (1, 500)" -> nanoseconds
std::uint64_t parse_timespec(const std::string& v) {
  long long s = 0, ns = 0;
  if (std::sscanf(v.c_str(), " (%lld, %lld)", &s, &ns) != 2) fail("fdinfo: bad time '{}'", v);
  return static_cast<std::uint64_t>(s) * 1000000000ULL + static_cast<std::uint64_t>(ns);
}

std::string value_of(const std::string& fdinfo, const std::string& key) {
  std::istringstream in(fdinfo);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind(key + ":", 0) == 0) {
      auto v = line.substr(key.size() + 1);
      auto b = v.find_first_not_of(" \t");
      return b == std::string::npos ? "" : v.substr(b);
    }
  fail("fdinfo has no '{}' line", key);
}

void dump_eventfd(const FdDumpCtx& c, Fd& f) {
  f.path.clear();
  f.count = std::stoull(value_of(c.fdinfo, "eventfd-count"), nullptr, 16);
  if (c.fdinfo.find("eventfd-semaphore:") != std::string::npos)
    f.semaphore = std::stoi(value_of(c.fdinfo, "eventfd-semaphore")) != 0;
}

void dump_signalfd(const FdDumpCtx& c, Fd& f) {
  f.path.clear();
  f.sigmask = std::stoull(value_of(c.fdinfo, "sigmask"), nullptr, 16);
}

void dump_timerfd(const FdDumpCtx& c, Fd& f) {
  f.path.clear();
  f.clockid = std::stoi(value_of(c.fdinfo, "clockid"));
  f.count = std::stoull(value_of(c.fdinfo, "ticks"));
  f.settime_flags = static_cast<int>(std::stoul(value_of(c.fdinfo, "settime flags"), nullptr, 8));
  f.value_ns = parse_timespec(value_of(c.fdinfo, "it_value"));
  f.interval_ns = parse_timespec(value_of(c.fdinfo, "it_interval"));
}

void dump_epoll(const FdDumpCtx& c, Fd& f) {
  f.path.clear();
  std::istringstream in(c.fdinfo);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("tfd:", 0) != 0) continue;
    EpollTarget t;
    unsigned events = 0;
    unsigned long long data = 0;
    if (std::sscanf(line.c_str(), "tfd: %d events: %x data: %llx", &t.fd, &events, &data) != 3)
      fail("fdinfo: bad epoll line '{}'", line);
    t.events = events;
    t.data = data;
    f.targets.push_back(t);
  }
}

std::uint64_t nonblock(const Fd& f) { return (f.flags & O_NONBLOCK) ? O_NONBLOCK : 0; }

long open_eventfd(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  Injector& inj = c.inj();
  const std::uint64_t flags = O_CLOEXEC | nonblock(f) | (f.semaphore ? EFD_SEMAPHORE : 0);
  if (f.count > 0xffffffffULL) {
    // eventfd2(2) takes an unsigned int: start at 0 and write the counter.
    long fd = inj.call_ok(who + ": eventfd2", SYS_eventfd2, 0, flags);
    remote_write(c.host_pid(), c.area.data(), &f.count, sizeof f.count);
    inj.call_ok(who + ": write of the eventfd counter", SYS_write, static_cast<std::uint64_t>(fd),
                c.area.data(), 8);
    return fd;
  }
  return inj.call_ok(who + ": eventfd2", SYS_eventfd2, f.count, flags);
}

long open_signalfd(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  remote_write(c.host_pid(), c.area.data(), &f.sigmask, sizeof f.sigmask);
  return c.inj().call_ok(who + ": signalfd4", SYS_signalfd4, static_cast<std::uint64_t>(-1),
                         c.area.data(), 8, O_CLOEXEC | nonblock(f));
}

long open_timerfd(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  Injector& inj = c.inj();
  long fd = inj.call_ok(who + ": timerfd_create", SYS_timerfd_create,
                        static_cast<std::uint64_t>(f.clockid), O_CLOEXEC | nonblock(f));
  // The time left is relative; expirations not yet read are folded into one that
  // fires at once.
  std::uint64_t value = f.value_ns;
  if (f.count && !value) value = 1;
  if (value || f.interval_ns) {
    itimerspec its{};
    its.it_interval.tv_sec = static_cast<time_t>(f.interval_ns / 1000000000ULL);
    its.it_interval.tv_nsec = static_cast<long>(f.interval_ns % 1000000000ULL);
    its.it_value.tv_sec = static_cast<time_t>(value / 1000000000ULL);
    its.it_value.tv_nsec = static_cast<long>(value % 1000000000ULL);
    if (!value) its.it_value.tv_nsec = 1;  // a periodic timer must be armed
    remote_write(c.host_pid(), c.area.data(), &its, sizeof its);
    inj.call_ok(who + ": timerfd_settime", SYS_timerfd_settime, static_cast<std::uint64_t>(fd), 0,
                c.area.data(), 0);
  }
  return fd;
}

long open_epoll(const FdRestoreCtx& c, const Fd&, const std::string& who) {
  return c.inj().call_ok(who + ": epoll_create1", SYS_epoll_create1, EPOLL_CLOEXEC);
}

// Registers an epoll fd's targets; run once every other fd of the process exists.
void add_epoll_targets(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  for (auto& t : f.targets) {
    epoll_event ev{};
    ev.events = t.events;
    ev.data.u64 = t.data;
    remote_write(c.host_pid(), c.area.data(), &ev, sizeof ev);
    c.inj().call_ok(fmt::format("{}: epoll_ctl(ADD) of fd {}", who, t.fd), SYS_epoll_ctl,
                    static_cast<std::uint64_t>(f.fd), EPOLL_CTL_ADD,
                    static_cast<std::uint64_t>(t.fd), c.area.data());
  }
}

}  // namespace

void check_epoll_targets(pid_t host_pid, const Fd& f, const std::string& where) {
  for (std::size_t i = 0; i < f.targets.size(); ++i) {
    const EpollTarget& t = f.targets[i];
    // The kernel finds the target by number and rank among those of that number, in
    // the order fdinfo lists them.
    kcmp_epoll_slot slot{};
    slot.efd = static_cast<__u32>(f.fd);
    slot.tfd = static_cast<__u32>(t.fd);
    for (std::size_t j = 0; j < i; ++j) slot.toff += f.targets[j].fd == t.fd ? 1 : 0;
    long r = ::syscall(SYS_kcmp, host_pid, host_pid, KCMP_EPOLL_TFD, t.fd, &slot);
    if (r == 0) continue;
    if (r < 0 && errno != EBADF && errno != ENOENT)
      fail_errno("{}: kcmp(KCMP_EPOLL_TFD) of target fd {}", where, t.fd);
    fail_unsupported(
        "{}: the epoll watches a file at fd {} that is no longer open at that number (closed "
        "or replaced, the file kept open by another fd): not supported",
        where, t.fd);
  }
}

const FdOps kEventfdFdOps{.kind = FdKind::kEventfd,
                          .anon_link = "anon_inode:[eventfd]",
                          .dump = dump_eventfd,
                          .open = open_eventfd,
                          .finish = nullptr,
                          .shareable = true,
                          .seekable = false};
const FdOps kEpollFdOps{.kind = FdKind::kEpoll,
                        .anon_link = "anon_inode:[eventpoll]",
                        .dump = dump_epoll,
                        .open = open_epoll,
                        .finish = add_epoll_targets,
                        .shareable = true,
                        .seekable = false};
const FdOps kTimerfdFdOps{.kind = FdKind::kTimerfd,
                          .anon_link = "anon_inode:[timerfd]",
                          .dump = dump_timerfd,
                          .open = open_timerfd,
                          .finish = nullptr,
                          .shareable = true,
                          .seekable = false};
const FdOps kSignalfdFdOps{.kind = FdKind::kSignalfd,
                           .anon_link = "anon_inode:[signalfd]",
                           .dump = dump_signalfd,
                           .open = open_signalfd,
                           .finish = nullptr,
                           .shareable = true,
                           .seekable = false};

}  // namespace fsched::ckpt
