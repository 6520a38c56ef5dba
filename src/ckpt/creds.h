// Credentials and per-process attributes: uids, gids, supplementary groups, dumpable
// flag, umask, personality, resource limits (capabilities and seccomp: confine.h).
// Kernel interfaces: /proc/PID/status (proc(5)), prlimit64(2), umask(2),
// personality(2), prctl(2) PR_SET_DUMPABLE, setgroups(2), setresgid(2), setresuid(2).
#pragma once

#include "ckpt/dump_context.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump: uids, gids, groups, umask, personality, rlimits, dumpable.
void dump_creds(DumpProcess& p);
// Restore: umask, personality, rlimits (before credentials drop) ...
void restore_process_attrs(RestoreProcess& p, const InjectionArea& area);
// ... and credentials in every thread, then dumpable; after this the process has
// no privileges left for the remaining injected syscalls.
void restore_creds(RestoreProcess& p, const InjectionArea& area);

}  // namespace fsched::ckpt
