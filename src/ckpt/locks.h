// File locks held by the job: POSIX record locks (fcntl(2) F_SETLK), open file
// description locks (F_OFD_SETLK), flock(2) locks and leases (F_SETLEASE). A POSIX lock
// belongs to the process that took it; the others to the open file description. Each
// is recorded on the fd through which the kernel shows it (/proc/PID/fdinfo/N "lock:"
// lines, same format as /proc/locks: proc(5)) and taken again by a syscall injected in
// the restored process, then the fdinfo of every fd is read back and must list exactly
// the dumped locks.
//
// Not the job's state, and so neither recorded nor refused: locks that processes
// outside the job hold on the job's files (at restore they are conflicts: an error),
// NFS delegations (the kernel's, "DELEG"), and mandatory locks (gone from Linux 5.15).
#pragma once

#include <span>
#include <string>

#include "ckpt/dump_context.h"
#include "ckpt/manifest.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump, for fd f of process p whose /proc/PID/fdinfo text is `fdinfo`, after
// f.shared_pid/shared_fd are known: fills f.locks with the POSIX locks p holds through
// it and, at the first fd of an open file description, that description's OFD, flock
// and lease locks. `where` names the process, fd and file in messages. Throws
// UnsupportedError for a lock it cannot restore: on a file that is not a regular file,
// a lease being broken, an unknown kind.
void dump_fd_locks(const DumpProcess& p, Fd& f, const std::string& fdinfo,
                   const std::string& where);

// Dump, once every process's fds are recorded: reads /proc/locks and throws
// UnsupportedError naming the process and file for a POSIX lock, flock or lease
// that a process of the job holds but that no fd of the job showed (held through an fd
// in flight in a Unix socket, for one), which the restore would lose. An OFD lock
// shows no pid: one that no fd of the job showed, on a file the job maps, may be held
// through that mapping (fd closed after mmap) or by any other process; refused, naming
// the mapping and the file. (One on a file the job does not map is taken as another
// process's: an OFD lock held only through an fd in flight is not detected.)
// `proc_locks` is the text of /proc/locks read after the job was frozen (the dump
// reads it on another thread while it dumps memory: the kernel formats it one page per
// read(2), walking its list from the start each time, which costs milliseconds when
// the job holds thousands of locks).
void check_unattributed_locks(std::span<DumpProcess> all, const std::string& proc_locks);

// Restore, after fds and credentials (a lease needs the job's fsuid to own the file,
// or CAP_LEASE, which the job must have had itself): takes every lock of p's fds again
// by injected fcntl(2) / flock(2) (never waiting), then checks that /proc/PID/fdinfo of
// each fd lists exactly the dumped locks. `area` is the injection area mapped in p.
// Throws Error naming the process, fd, file and range when a lock cannot be taken (a
// process outside the job holds a conflicting one now) or is not there after.
void restore_locks(RestoreProcess& p, const InjectionArea& area);

}  // namespace fsched::ckpt
