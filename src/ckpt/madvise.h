// Per-mapping flags a job asked the kernel for with madvise(2), mlock(2)/mlock2(2),
// mlockall(2) and mseal(2), as /proc/PID/smaps "VmFlags" shows them (proc(5)): a
// restore that maps the memory again but forgets them changes how the job runs (a
// MADV_WIPEONFORK area is copied to the next child, locked memory can be swapped out,
// a sealed area can be unmapped). Each flag is either restored and read back, ignored
// because it follows from what the mapping is (madvise.cpp lists them, with why), or
// refused at dump with an error naming the mapping.
#pragma once

#include <cstdint>
#include <string>

#include "ckpt/dump_context.h"
#include "ckpt/manifest.h"
#include "ckpt/proc.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

class Injector;

// /proc/PID/pagemap entry bit of a guard-region page (pagemap.rst, kernel 6.15); the
// page copy skips such pages (they also show as swapped, and cannot be read).
inline constexpr std::uint64_t kPmGuardRegion = 1ULL << 58;

// Dump, one mapping of host process `pid`: records in v.vmflags the VmFlags of `m` that the restore
// sets again; v.kind, v.shared and v.prot must be filled already. Throws UnsupportedError naming
// the mapping (`where`) for a flag the engine cannot restore (hugetlb, device and userfaultfd
// mappings, shadow stacks, guard regions, a memory protection key, flags this engine does not
// know).
void dump_vma_flags(pid_t pid, const MapsEntry& m, Vma& v, const std::string& where,
                    bool uffd_wp_ours = false);

// Dump, per process, with its injector open and after its credentials and thread
// confinement are read: whether mlockall(2) MCL_FUTURE is in force (the scratch mapping
// the dumper made shows it: the kernel locks every new mapping) into p.rec.mlockall;
// refuses (UnsupportedError) a job whose locked memory exceeds its RLIMIT_MEMLOCK
// without CAP_IPC_LOCK (the kernel allows it when the limit is lowered after the lock,
// but a restore as the job could not lock it again), and KSM merge-any
// (prctl(2) PR_SET_MEMORY_MERGE), which only CAP_SYS_RESOURCE may set.
void dump_mm_locks(DumpProcess& p);

// Restore, during the memory restore (pages filled, final protections set): the
// madvise(2) flags and guard regions of v, by injected madvise in the process behind
// `inj`. Throws Error naming the mapping.
void restore_vma_advice(Injector& inj, int pid, const Vma& v);

// Restore, after restore_creds (so the job's own RLIMIT_MEMLOCK and capabilities
// decide, as when it locked them): mlock2(2) of every locked mapping, mlockall(2)
// MCL_FUTURE, mseal(2) last; then reads /proc/PID/smaps back and compares the restored
// flags of every mapping with the image. Throws Error("process N: mapping A-B ...")
// when the kernel refuses a lock or a flag differs.
void restore_vma_locks(RestoreProcess& p);

}  // namespace fsched::ckpt
