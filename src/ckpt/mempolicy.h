// NUMA memory policies (issue 13, "no silent loss"): each thread's policy
// (set_mempolicy(2)) and each mapping's (mbind(2)), with their mode flags
// (MPOL_F_STATIC_NODES, MPOL_F_RELATIVE_NODES, MPOL_F_NUMA_BALANCING) and node masks, as
// get_mempolicy(2) reports them. A mapping's policy is looked for only where
// /proc/PID/numa_maps (proc(5)) shows one other than "default". Restored by injected
// syscalls: a mapping's right after it is mapped, before its pages are written (so they
// are placed by it), a thread's in that thread; each is read back. Not visible to any
// interface, so neither recorded nor refused: a preferred home node
// (set_mempolicy_home_node(2)).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "ckpt/dump_context.h"
#include "ckpt/manifest.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

class Injector;

// Dump, thread `tid` of process `pid` (stopped; `inj` its injector, `scratch` a writable
// address of at least 256 bytes in the process): fills t.mempolicy. Throws Error naming
// the thread when get_mempolicy fails.
void dump_thread_mempolicy(pid_t pid, pid_t tid, Injector& inj, std::uint64_t scratch, Thread& t);

// Dump: /proc/PID/numa_maps of process `pid` (frozen), "" on a kernel without NUMA.
// Reading it walks the page table of every mapping (to count pages per node): a dump
// reads it beside other work. Throws Error when it cannot be read.
std::string read_numa_maps(pid_t pid);

// Dump, after the process's mappings are recorded (p.rec.vmas), with `numa_maps` read
// from it by read_numa_maps while it was frozen: fills Vma::mempolicy of every mapping
// with a policy of its own. Throws Error naming the mapping when get_mempolicy fails,
// UnsupportedError for a policy on a mapping the engine does not record.
void dump_vma_mempolicies(DumpProcess& p, const std::string& numa_maps);

// Restore: gives mapping v (just mapped in host process `pid`, through `inj`) its
// policy by mbind(2) and reads it back. `what` names the mapping in errors; ImageError
// for a malformed record, Error when the kernel refuses (a node this machine lacks).
void restore_vma_mempolicy(Injector& inj, pid_t pid, const InjectionArea& area, const Vma& v,
                           const std::string& what);

// Restore: each thread of p its policy by set_mempolicy(2) in that thread, read back.
void restore_thread_mempolicies(RestoreProcess& p, const InjectionArea& area);

}  // namespace fsched::ckpt
