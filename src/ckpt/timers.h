// Timers: the three interval timers of a process (ITIMER_REAL, ITIMER_VIRTUAL,
// ITIMER_PROF). (POSIX timers: posix_timers.h; timerfds are fds: eventfds.h.) Kernel
// interfaces: getitimer(2)/setitimer(2) by injection.
#pragma once

#include "ckpt/dump_context.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump: interval timers.
void dump_timers(DumpProcess& p);
// Restore: sets them again with the time that was left.
void restore_timers(RestoreProcess& p, const InjectionArea& area);

}  // namespace fsched::ckpt
