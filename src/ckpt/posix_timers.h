// POSIX per-process timers (timer_create(2)): clock, notification (SIGEV_SIGNAL with
// its signal and sigev_value, SIGEV_THREAD_ID with its target thread, SIGEV_NONE),
// time left and interval, restored with the same timer ids. (Interval timers:
// timers.h; timerfds are fds: eventfds.h.) Kernel interfaces: /proc/PID/timers
// (proc(5): ID, "signal: SIGNO/SIGEV_VALUE", notify, ClockID), timer_gettime(2) and
// timer_create(2)/timer_settime(2) by injection, prctl(2)
// PR_TIMER_CREATE_RESTORE_IDS (Linux 6.13), which makes timer_create take the id it is
// given.
#pragma once

#include "ckpt/dump_context.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump, after dump_threads and dump_signals (it needs the job TIDs and the pending
// signals): fills p.rec.posix_timers. A timer's signal that is queued, not yet taken,
// is moved out of the pending signals into its timer (PosixTimer::signal_pending):
// restore has the timer itself fire it again, so that the kernel knows it is queued
// (a timer does not queue a second signal while its first one waits, it counts an
// overrun). Throws UnsupportedError naming the process and timer for what the restore
// could not make the same: a clock of another process or thread, an alarm clock, a
// thread CPU clock in a process with several threads, a kernel without
// PR_TIMER_CREATE_RESTORE_IDS; Error if /proc/PID/timers cannot be parsed.
void dump_posix_timers(DumpProcess& p);

// Restore, after the pending signals: creates each timer with its id, clock and
// notification, and sets its time left and interval (relative; a timer whose signal
// was queued fires again at once). Reads each one back (timer_gettime) and throws
// Error naming the process and timer on a difference. Nothing for an image without
// timers (older engines refused them).
void restore_posix_timers(RestoreProcess& p, const InjectionArea& area);

}  // namespace fsched::ckpt
