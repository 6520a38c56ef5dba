// Namespaces of a job. `fsched-ckpt run` starts the job's init in new PID, IPC and
// mount namespaces, and the restore recreates exactly these: PIDs and SysV ids are
// then free on any node, and the job sees a /proc of its own PID namespace (without
// it, /proc/<getpid()> names another process or none). Every other namespace (network,
// UTS, user, cgroup, time) is the node's, so a job process that made one of its own
// holds state the restore would lose: the dump refuses it.
// Kernel interfaces: /proc/PID/ns/* (namespaces(7)), clone3(2) CLONE_NEWNS, mount(2)
// MS_SLAVE | MS_REC, proc(5) (a procfs mount shows the PID namespace of its mounter),
// devpts newinstance (Documentation/filesystems/devpts.rst).
#pragma once

#include <sys/types.h>

#include <vector>

#include "ckpt/dump_context.h"

namespace fsched::ckpt {

// The clone3(2) flags of a job's init, at run and at restore.
inline constexpr unsigned long long kJobNamespaces = 0x20000000ULL /* CLONE_NEWPID */ |
                                                     0x08000000ULL /* CLONE_NEWIPC */ |
                                                     0x00020000ULL /* CLONE_NEWNS */;

// In the new init, first thing: makes every mount a slave of the node's (mounts made
// on the node still reach the job; the job's never leak out), mounts a procfs of
// the init's PID namespace on /proc and a devpts instance of the job's own on
// /dev/pts, its ptmx bound over /dev/ptmx (pseudo-terminals, tty.h). Raw syscalls only: the
// restore's init is a clone of a multi-threaded process. Returns 0, or the negative errno of the
// step that failed.
long enter_job_mount_namespace() noexcept;

// Dump: checks that every process of `procs` (zombies excepted: they hold no
// namespace) shares the PID, IPC and mount namespaces of the job's init `root` and
// the network, UTS, user, cgroup and time namespaces of the dumper, its children's
// PID and time namespaces included. Throws UnsupportedError naming the process and
// the namespace otherwise.
void check_namespaces(pid_t root, const std::vector<DumpProcess>& procs);

}  // namespace fsched::ckpt
