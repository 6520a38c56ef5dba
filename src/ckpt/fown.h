// Signal-driven I/O of an fd: its owner (fcntl(2) F_SETOWN / F_SETOWN_EX: the thread,
// process or process group that gets the signal when I/O is possible, or a lease is
// broken), the signal (F_SETSIG; 0 is SIGIO) and the O_ASYNC flag that enables it. All
// three belong to the open file description.
#pragma once

#include <span>
#include <string>

#include "ckpt/dump_context.h"
#include "ckpt/manifest.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump, for fd f of process p (all: the job's processes): fills f.owner_type, f.owner
// (translated from the host PID namespace to the job's) and f.owner_signal, read with
// F_GETOWN_EX and F_GETSIG on the dumper's copy of the fd (pidfd_getfd(2)). Throws
// UnsupportedError naming `where` (process, fd, file) when the owner is not a thread,
// process or process group of the job.
void dump_fd_owner(const DumpProcess& p, std::span<DumpProcess> all, Fd& f,
                   const std::string& where);

// Restore, after the credentials (the kernel records the setter's uid and euid with
// the owner and checks them when it sends the signal): F_SETOWN_EX and F_SETSIG
// injected in p with the job's PID numbers, and O_ASYNC by F_SETFL, which reopening an
// fd does not give back; each read back. `area` is the injection area mapped in p.
// Throws Error naming the process and fd.
void restore_fd_owners(RestoreProcess& p, const InjectionArea& area);

}  // namespace fsched::ckpt
