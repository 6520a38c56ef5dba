// Event fds: eventfd(2), epoll(7), timerfd_create(2) and signalfd(2) objects, as used
// by event loops (Python's asyncio, libuv, Go). Their state is read from
// /proc/PID/fdinfo (proc(5)); on restore each is created again inside the process and
// epoll instances re-register their targets once all the process's fds exist.
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>

#include <cstring>
#include <sstream>

#include "ckpt/parts.h"
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

}  // namespace

bool dump_event_fd(const std::string& link, const std::string& fdinfo, Fd& f) {
  if (link == "anon_inode:[eventfd]") {
    f.kind = "eventfd";
    f.count = std::stoull(value_of(fdinfo, "eventfd-count"), nullptr, 16);
    if (fdinfo.find("eventfd-semaphore:") != std::string::npos)
      f.semaphore = std::stoi(value_of(fdinfo, "eventfd-semaphore")) != 0;
    return true;
  }
  if (link == "anon_inode:[signalfd]") {
    f.kind = "signalfd";
    f.sigmask = std::stoull(value_of(fdinfo, "sigmask"), nullptr, 16);
    return true;
  }
  if (link == "anon_inode:[timerfd]") {
    f.kind = "timerfd";
    f.clockid = std::stoi(value_of(fdinfo, "clockid"));
    f.count = std::stoull(value_of(fdinfo, "ticks"));
    f.settime_flags = static_cast<int>(std::stoul(value_of(fdinfo, "settime flags"), nullptr, 8));
    f.value_ns = parse_timespec(value_of(fdinfo, "it_value"));
    f.interval_ns = parse_timespec(value_of(fdinfo, "it_interval"));
    return true;
  }
  if (link == "anon_inode:[eventpoll]") {
    f.kind = "epoll";
    std::istringstream in(fdinfo);
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
    return true;
  }
  return false;
}

long create_event_fd(Injector& inj, const InjectionArea& area, pid_t host_pid, const Fd& f,
                     const std::string& who) {
  const std::uint64_t nb = (f.flags & O_NONBLOCK) ? O_NONBLOCK : 0;
  if (f.kind == "eventfd") {
    if (f.count > 0xffffffffULL) {
      // eventfd2(2) takes an unsigned int: start at 0 and write the counter.
      long fd = inj.call_ok(who + ": eventfd2", SYS_eventfd2, 0,
                            O_CLOEXEC | nb | (f.semaphore ? EFD_SEMAPHORE : 0));
      remote_write(host_pid, area.data(), &f.count, sizeof f.count);
      inj.call_ok(who + ": write of the eventfd counter", SYS_write, static_cast<std::uint64_t>(fd),
                  area.data(), 8);
      return fd;
    }
    return inj.call_ok(who + ": eventfd2", SYS_eventfd2, f.count,
                       O_CLOEXEC | nb | (f.semaphore ? EFD_SEMAPHORE : 0));
  }
  if (f.kind == "signalfd") {
    remote_write(host_pid, area.data(), &f.sigmask, sizeof f.sigmask);
    return inj.call_ok(who + ": signalfd4", SYS_signalfd4, static_cast<std::uint64_t>(-1), area.data(),
                       8, O_CLOEXEC | nb);
  }
  if (f.kind == "timerfd") {
    long fd = inj.call_ok(who + ": timerfd_create", SYS_timerfd_create,
                          static_cast<std::uint64_t>(f.clockid), O_CLOEXEC | nb);
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
      remote_write(host_pid, area.data(), &its, sizeof its);
      inj.call_ok(who + ": timerfd_settime", SYS_timerfd_settime, static_cast<std::uint64_t>(fd), 0,
                  area.data(), 0);
    }
    return fd;
  }
  if (f.kind == "epoll") return inj.call_ok(who + ": epoll_create1", SYS_epoll_create1, EPOLL_CLOEXEC);
  fail("{}: not an event fd", who);
}

void add_epoll_targets(Injector& inj, const InjectionArea& area, pid_t host_pid, const Fd& f,
                       const std::string& who) {
  for (auto& t : f.targets) {
    epoll_event ev{};
    ev.events = t.events;
    ev.data.u64 = t.data;
    remote_write(host_pid, area.data(), &ev, sizeof ev);
    inj.call_ok(fmt::format("{}: epoll_ctl(ADD) of fd {}", who, t.fd), SYS_epoll_ctl,
                static_cast<std::uint64_t>(f.fd), EPOLL_CTL_ADD, static_cast<std::uint64_t>(t.fd),
                area.data());
  }
}

}  // namespace fsched::ckpt
