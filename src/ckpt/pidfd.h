// pidfds (pidfd_open(2), clone3(2) CLONE_PIDFD, pidfd_send_signal(2)): an fd that
// refers to a process (or, PIDFD_THREAD, a thread) of the job. Dumped from fdinfo
// (proc(5): "Pid:", the pid in the reader's namespace, -1 once the process was
// reaped); restored by pidfd_open(2) of the same pid inside the restored process, so
// in the job's PID namespace, with the same flags (PIDFD_NONBLOCK, PIDFD_THREAD).
#pragma once

#include "ckpt/fd_ops.h"

namespace fsched::ckpt {

// FdKind::kPidfd. Dump throws UnsupportedError naming the fd for a pidfd of a process
// that was reaped (no pid can be opened for it again) or of a process outside the job
// (another PID namespace: the restored job has no such process).
extern const FdOps kPidfdFdOps;

}  // namespace fsched::ckpt
