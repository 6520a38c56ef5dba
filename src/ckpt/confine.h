// Confinement of each thread: capability sets (inheritable, permitted, effective,
// bounding, ambient), securebits, no_new_privs, seccomp strict mode and filters. A job that
// confined itself stays confined after a restore, and gets no capability it had dropped.
// Interfaces: /proc/PID/task/TID/status (proc(5): CapInh..CapAmb, NoNewPrivs, Seccomp),
// prctl(2) PR_GET/SET_SECUREBITS, PR_CAPBSET_DROP, PR_CAP_AMBIENT, PR_SET_NO_NEW_PRIVS,
// capset(2), ptrace(2) PTRACE_SECCOMP_GET_FILTER / PTRACE_SECCOMP_GET_METADATA /
// PTRACE_O_SUSPEND_SECCOMP (suspends strict mode and filters alike), seccomp(2)
// SECCOMP_SET_MODE_STRICT, SECCOMP_SET_MODE_FILTER.
#pragma once

#include <sys/types.h>

#include "ckpt/manifest.h"

namespace fsched::ckpt {

class Injector;
struct InjectionArea;

// ptrace option that keeps a tracee's seccomp filters from acting on the syscalls the
// engine injects (the tracer needs CAP_SYS_ADMIN and no filter of its own).
inline constexpr unsigned kSuspendSeccomp = 1u << 21;  // PTRACE_O_SUSPEND_SECCOMP

// Dump: fills t.confinement of stopped thread `tid` (host TID), securebits through
// `inj` (an injector of that thread). Throws an Error naming the thread for filters
// that cannot be read, UnsupportedError for a seccomp mode other than strict or filter.
void dump_confinement(pid_t tid, Injector& inj, Thread& t);

// Restore, in thread `inj` (still root), in three steps around its setresuid(2):
// before — no_new_privs, seccomp strict mode or filters (oldest first; suspended by
// ptrace until the job is released), bounding set, and SECBIT_KEEP_CAPS so its permitted set
// survives; after — inheritable, ambient, securebits, then the exact permitted and effective sets.
// Throws Error("<who>: ...") when the kernel refuses (e.g. a capability this host's
// root lacks).
void confine_before_ids(Injector& inj, pid_t host_tid, const InjectionArea& area,
                        const Confinement& c, const std::string& who);
void confine_after_ids(Injector& inj, pid_t host_tid, const InjectionArea& area,
                       const Confinement& c, const std::string& who);

}  // namespace fsched::ckpt
