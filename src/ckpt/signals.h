// Signal dispositions of a process (handler, flags, restorer, mask of every signal)
// and its process-wide pending signals. Per-thread masks and pending signals go with
// the threads (threads.h). Kernel interfaces: rt_sigaction(2) by injection,
// /proc/PID/status SigCgt/SigIgn (proc(5)), ptrace(2) PTRACE_PEEKSIGINFO.
#pragma once

#include "ckpt/dump_context.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump: signal handlers and the process-wide pending queue of p.
void dump_signals(DumpProcess& p);
// Restore: the signal handlers.
void restore_signals(RestoreProcess& p, const InjectionArea& area);

}  // namespace fsched::ckpt
