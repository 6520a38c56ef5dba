// Memory: the VMA layout, mm fields (prctl(2) PR_SET_MM_MAP), auxv, brk and the
// contents of private pages; on restore the helper's address space is replaced by
// the saved one and the vDSO moved to its saved place. Kernel interfaces:
// /proc/PID/smaps, /proc/PID/pagemap, /proc/PID/auxv, /proc/PID/map_files (proc(5)),
// process_vm_readv(2)/process_vm_writev(2), mmap(2), mremap(2), madvise(2),
// shmat(2) for SysV attaches.
#pragma once

#include <cstdint>

#include "ckpt/dump_context.h"
#include "ckpt/image.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

class JobTracking;
class ParentChain;
class PreCopy;
struct PageHashing;

// Dump, in three steps: the VMA layout, mm fields and auxv (before any injection,
// which maps a scratch area); the brk, by injection; then the contents of present,
// non-zero pages to the image's page stream, from outside the job. dump_pages
// returns the bytes of memory stored (before compression).
//
// With `tracking` (mem_tracking.h), the written state of each tracked VMA is read and
// reset first; with `incremental` too, only its pages written since the parent image
// are read, and those not written go to Vma::parent_runs (docs/incremental.md).
// With `pre` too (precopy.h), a page not written since that round but found written
// by it is stored from the round's copy, put into the stream by
// ImageWriter::append_deferred (after the thaw when the writer holds), not read now.
//
// With `hashing` instead (page_hashes.h), every private page is read and hashed; with
// a parent to compare with, a page equal to the parent's at its address goes to
// Vma::parent_runs instead of being stored. Either way its hash joins hashing->out.
void dump_memory_layout(DumpProcess& p);
void dump_memory_injected(DumpProcess& p);
std::uint64_t dump_pages(DumpProcess& p, ImageWriter& img, JobTracking* tracking = nullptr,
                         bool incremental = false, PageHashing* hashing = nullptr,
                         const PreCopy* pre = nullptr);
// Pre-dump (docs/incremental.md): the same from a job that runs again, its pages
// write-protected beforehand (JobTracking::reset_all). Reads through /proc/PID/mem;
// pages of a range unmapped meanwhile (EIO) are left out, which is safe: whatever is
// mapped there at the next dump is not the tracked mapping, so all of it reads as
// written. Throws Error on any other read failure.
std::uint64_t dump_pages_running(DumpProcess& p, ImageWriter& img, PageHashing* hashing = nullptr);

// Restore: replaces the helper's address space with the saved one (pages from the
// page stream; shared objects and deleted files mapped from `shm`), moves the vDSO,
// sets the mm fields. Leaves the injection area. The pages of an incremental image's
// Vma::parent_runs come from `chain` (parent_chain.h), which such an image needs.
void restore_memory(RestoreProcess& p, const InjectionArea& area, PageReader& pages,
                    const ShmTable& shm, ParentChain* chain = nullptr);
// Removes the injection area; the last injected syscall in the process.
void unmap_injection_area(RestoreProcess& p, const InjectionArea& area);

}  // namespace fsched::ckpt
