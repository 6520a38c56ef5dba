// Where a process sits in the system, which a restore must give back or the job runs
// silently somewhere else (issue 13, "no silent loss"):
//   root directory — chroot(2); /proc/PID/root (proc(5)). Restored by fchdir(2) to the
//                    directory, opened as the job without following symlinks and checked
//                    to be the same inode, then chroot("."), then back to the cwd.
//   cgroup         — cgroup v2 membership (cgroups(7), /proc/PID/cgroup "0::PATH"), as a
//                    path below the job init's cgroup: a process the job moved into a
//                    sub-cgroup of its own is moved into the same sub-cgroup of the
//                    restored init's cgroup (created if missing). Refused at dump: a
//                    process outside the init's cgroup subtree; a sub-cgroup with
//                    controllers enabled (its limits would not come back); threaded
//                    sub-cgroups; cgroup v1 hierarchies where a process differs from init.
//   login uid      — the audit login uid (/proc/PID/loginuid, written by the process
//                    itself with CAP_AUDIT_CONTROL, which the restored process still has
//                    before its credentials are restored). The audit session id
//                    (/proc/PID/sessionid) cannot be chosen: the kernel assigns a new one
//                    when the login uid is written, as at a new login.
#pragma once

#include "ckpt/dump_context.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump, process p (frozen) of a job whose init is `init` (p may be init): fills
// p.rec.root/root_id, cgroup, loginuid and sets p.rec.placement. Throws
// UnsupportedError naming the process for a placement the restore could not give back
// (see above), Error when /proc cannot be read.
void dump_placement(DumpProcess& p, const DumpProcess& init);

// Restore (nothing for an image that did not record them: Process::placement), after
// the process's files and cwd and before its credentials: its cgroup (by the
// restorer, root), login uid and root directory (injected in the process). `area` is
// the injection area mapped in the process. Throws Error("process N: ...") when a
// value cannot be set or does not read back; ImageError for a malformed record.
void restore_placement(RestoreProcess& p, const InjectionArea& area);

}  // namespace fsched::ckpt
