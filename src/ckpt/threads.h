// Threads: registers, FPU/SSE/AVX xstate, signal mask, rseq registration, robust
// futex list, clear-child-TID address, sigaltstack, name and pending signals of every
// thread; restore creates the other threads with their saved TIDs. Kernel interfaces:
// ptrace(2) GETREGS/GETREGSET(NT_X86_XSTATE)/GET_RSEQ_CONFIGURATION/PEEKSIGINFO,
// get_robust_list(2), prctl(2) PR_GET_TID_ADDRESS, sigaltstack(2), clone3(2),
// rt_tgsigqueueinfo(2).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <vector>

#include "ckpt/dump_context.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump: every thread's state into p.rec.threads; `xstate_size` is the kernel's
// xstate size (Manifest::xstate_size).
void dump_threads(DumpProcess& p, std::uint64_t xstate_size);
// The NT_X86_XSTATE regset of a stopped thread (its size is the kernel's xstate size).
std::vector<std::uint8_t> read_xstate(pid_t tid);

// Restore: creates the other threads with their TIDs and sets every thread's
// registers, xstate, rseq, robust list, TID address, sigaltstack, name.
void restore_threads(RestoreProcess& p, const InjectionArea& area);
// Queues saved pending signals (after credentials, as the job itself).
void restore_pending_signals(RestoreProcess& p, const InjectionArea& area);

}  // namespace fsched::ckpt
