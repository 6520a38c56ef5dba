// Event fds: eventfd(2), epoll(7), timerfd_create(2) and signalfd(2) objects, as used
// by event loops (Python's asyncio, libuv, Go); one FdOps per kind. Their state is read
// from /proc/PID/fdinfo (proc(5)); on restore each is created again inside the
// process by injection, and epoll instances re-register their targets (epoll_ctl(2))
// once all the process's fds exist.
#pragma once

#include "ckpt/fd_ops.h"

namespace fsched::ckpt {

// FdKind::kEventfd, kEpoll, kTimerfd, kSignalfd.
extern const FdOps kEventfdFdOps;
extern const FdOps kEpollFdOps;
extern const FdOps kTimerfdFdOps;
extern const FdOps kSignalfdFdOps;

}  // namespace fsched::ckpt
