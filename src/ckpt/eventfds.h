// Event fds: eventfd(2), epoll(7), timerfd_create(2) and signalfd(2) objects, as used
// by event loops (Python's asyncio, libuv, Go); one FdOps per kind. Their state is read
// from /proc/PID/fdinfo (proc(5)); on restore each is created again inside the
// process by injection, and epoll instances re-register their targets (epoll_ctl(2))
// once all the process's fds exist.
#pragma once

#include <sys/types.h>

#include <string>

#include "ckpt/fd_ops.h"

namespace fsched::ckpt {

// FdKind::kEventfd, kEpoll, kTimerfd, kSignalfd.
extern const FdOps kEventfdFdOps;
extern const FdOps kEpollFdOps;
extern const FdOps kTimerfdFdOps;
extern const FdOps kSignalfdFdOps;

// Dump: checks that each target of epoll fd f (f.targets, from fdinfo) is still the
// file at that fd number in process `host_pid`, as restore adds it again by number.
// An epoll keeps watching a file whose fd was closed while a dup of it stays open, or
// whose number now holds another file. Throws UnsupportedError naming `where` and the
// target fd otherwise. Kernel interface: kcmp(2) KCMP_EPOLL_TFD.
void check_epoll_targets(pid_t host_pid, const Fd& f, const std::string& where);

}  // namespace fsched::ckpt
