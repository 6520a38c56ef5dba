// The process tree: checking that a PID is a job's init, each process's ids (PID,
// parent, process group, session, exit signal, zombie status) and creating the tree
// again with the saved PIDs in a new PID namespace. (Freezing the tree for a dump:
// FrozenTree, dump_context.h.) Kernel interfaces: /proc/PID/status NSpid and
// /proc/PID/stat (proc(5)), ptrace(2), clone3(2) with set_tid, setsid(2), setpgid(2).
#pragma once

#include <sys/types.h>

#include <vector>

#include "ckpt/dump_context.h"
#include "ckpt/manifest.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Checks that host PID `pid` is the init of a job started by `fsched-ckpt run`;
// throws Error saying why not.
void check_job_root(pid_t pid);

// Dump: PIDs, parent, process group, session, exit signal, zombie status and the
// TIDs of p's threads, in the job's PID namespace.
void dump_ids(DumpProcess& p);

// Restore: creates every process of the manifest in a new PID namespace with its
// saved PID, session and process group, each a stopped, seized copy of a helper that
// holds only the injection area (chosen here, `area`). Returns them in manifest
// order; procs[0] is init, a child of the calling process. A process that shared its
// parent's fd table (Process::files_of_parent) is created with CLONE_FILES.
// On failure `procs` holds what was created so far, for the caller to kill.
// A zombie is still a live copy of its parent: make_zombies() ends it.
void create_tree(const Manifest& m, InjectionArea& area, std::vector<RestoreProcess>& procs);

// Restore, once the sockets exist (a zombie may have made some: unix_peercred.h): each
// zombie of `procs` exits as it did (exit_group(2) with its status, or the signal that
// killed it, without a core dump), and stays unreaped. Throws Error naming the process.
void make_zombies(std::vector<RestoreProcess>& procs, const InjectionArea& area);

// Restore, last step before the tasks are detached: a process that was in a job-control
// stop (Process::stop_signal) gets its stop signal queued (kill(2) by the restorer), so
// that on detach it stops again before running one instruction (a pending signal is
// taken on the way back to user mode; signal(7)). SIGSTOP stands in for SIGTSTP,
// SIGTTIN or SIGTTOU when the job handles or blocks that signal now. As at any stop,
// the parent is notified (SIGCHLD, and waitpid(2) WUNTRACED reports the stop again).
// Throws Error naming the process if kill(2) fails.
void queue_stops(const std::vector<RestoreProcess>& procs);

}  // namespace fsched::ckpt
