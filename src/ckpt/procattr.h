// Process-control attributes: what a process or thread asked the kernel for about how
// it is scheduled, reaped and reclaimed, and that a restore must give back exactly, or
// the job silently runs differently after it (issue 13, "no silent loss"):
//   per thread  — scheduling policy, flags, nice and priority (sched_getattr(2),
//                 sched_setattr(2)); timer slack (prctl(2) PR_GET/SET_TIMERSLACK);
//                 parent-death signal (PR_GET/SET_PDEATHSIG);
//   per process — child-subreaper flag (PR_GET/SET_CHILD_SUBREAPER); THP disable
//                 (PR_GET/SET_THP_DISABLE); membarrier(2) registrations
//                 (MEMBARRIER_CMD_GET_REGISTRATIONS, kernel 6.3+); oom_score_adj
//                 (/proc/PID/oom_score_adj, proc(5)).
// Each value is read back after it is set, and a difference is an error naming the
// process or thread and the attribute: the kernel may refuse silently (clamping).
#pragma once

#include <sys/types.h>

#include <string>

#include "ckpt/dump_context.h"
#include "ckpt/manifest.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

class Injector;

// Dump, thread `tid` (host TID) of process `pid`, stopped, with `inj` its injector and
// `scratch` a writable address in the process: fills t.sched, t.timerslack_ns,
// t.pdeath_signal. Throws Error naming the thread when the kernel refuses a query.
void dump_thread_attrs(pid_t pid, pid_t tid, Injector& inj, std::uint64_t scratch, Thread& t);

// Dump, per process (leader's injector p.inj): subreaper, THP disable, membarrier
// registrations, oom_score_adj into p.rec. Throws UnsupportedError for membarrier
// registrations it cannot restore or cannot read (kernel < 6.3).
void dump_process_ctl(DumpProcess& p);

// Restore (nothing for an image that did not record them: Process::procattr), after
// the credentials are set (a change of credentials clears the
// parent-death signal, prctl(2)): scheduling attributes (sched_setattr(2) on the host
// TID, by the restorer, which is root), oom_score_adj (written by the restorer),
// subreaper, THP disable, membarrier registrations, each thread's timer slack and
// parent-death signal (injected; none needs privilege). `area` is the injection area
// mapped in the process. Throws Error("process N: ...") when the kernel refuses or
// clamps a value.
void restore_process_ctl(RestoreProcess& p, const InjectionArea& area);

}  // namespace fsched::ckpt
