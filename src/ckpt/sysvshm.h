// SysV shared memory segments (shmget(2)) of the job's IPC namespace, restored with
// the same shmids in the restored job's new IPC namespace; the attaches themselves
// are VmaKind::kSysv mappings (memory.h). SysV semaphores and message queues are
// refused. Kernel interfaces: setns(2) CLONE_NEWIPC, shmctl(2) SHM_STAT_ANY,
// shmat(2), mincore(2), /proc/sys/kernel/shm_next_id (proc(5)).
#pragma once

#include <span>

#include "ckpt/dump_context.h"
#include "ckpt/image.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Dump: every segment (after the deleted files' data in the page stream); refuses a
// job that shares the host's IPC namespace and maps a segment, and SysV semaphores
// and message queues. Needs the layout of every process (VmaKind::kSysv VMAs).
void dump_sysv_shm(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img);
// Restore: creates the segments with their shmids in init's (new) IPC namespace and
// fills them; the processes attach them in restore_memory.
void create_sysv_shm(const RestoreProcess& init, const Manifest& m, PageReader& pages);
// Once every process has attached its segments: removes the ones removed at dump time.
void finish_sysv_shm(const RestoreProcess& init, const Manifest& m);

}  // namespace fsched::ckpt
