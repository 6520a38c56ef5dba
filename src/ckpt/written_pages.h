// Which pages of a process were written since a point in time (issue 14: incremental
// checkpoints and pre-dump), with userfaultfd(2) in asynchronous write-protect mode and
// the PAGEMAP_SCAN ioctl of /proc/PID/pagemap (Linux 6.7; userfaultfd(2),
// Documentation/admin-guide/mm/userfaultfd.rst "Write Protect Notifications",
// Documentation/admin-guide/mm/pagemap.rst "Pagemap Scan IOCTL"). This kernel has no
// soft-dirty bits (DESIGN.md), which CRIU's pre-dump relies on.
//
// How it works. A userfaultfd belongs to the mm of the process that made it (the dump
// makes it by injection) but can be driven from any process holding it: UFFDIO_API
// with UFFD_FEATURE_WP_ASYNC | UFFD_FEATURE_WP_UNPOPULATED, then UFFDIO_REGISTER with
// UFFDIO_REGISTER_MODE_WP on a range. A scan with PM_SCAN_WP_MATCHING then reports the
// pages written since the last such scan and write-protects them again, atomically. A
// write to a protected page costs the writer one minor fault, resolved by the kernel
// itself (async mode: the job never waits for anyone), which marks the page written.
//
// What the kernel reports as written, measured on this kernel (tests/unit/
// written_pages_test.cpp): every page of a range no userfaultfd of ours watches (a
// VMA mapped, moved by mremap(2) or inherited by fork(2) since), a page zapped by
// MADV_DONTNEED (even when not touched again), a page written. So "not written" is
// safe to take from the last image: the page holds what it held at the last scan.
// What it cannot see: writes by the kernel to pages it pinned before the scan
// (io_uring fixed buffers, vmsplice(2), O_DIRECT AIO in flight); the dump refuses
// those kinds.
//
// Closing the last fd of a userfaultfd unregisters every range: someone must hold it
// between two dumps (dump.cpp hands it to the job's init).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "common/fd.h"

namespace fsched::ckpt {

// Whether this kernel has both mechanisms: probed once per process with a userfaultfd
// of our own (UFFD_USER_MODE_ONLY; UFFDIO_API features) and a PAGEMAP_SCAN of our own
// /proc/self/pagemap. Never throws.
bool written_tracking_available();

// Turns on asynchronous write-protect tracking on `uffd`, a userfaultfd not yet set up
// (UFFDIO_API). Throws Error naming `what` when the kernel refuses the features.
void start_wp_async(int uffd, const std::string& what);

// Registers [start, end) (page aligned, bytes of the address space of uffd's mm) for
// write-protect tracking. An already tracked range is accepted again. Returns false
// when the range cannot be tracked: another userfaultfd has it (EBUSY), its kind does
// not allow it (EINVAL), or uffd's mm is gone (ENOMEM, ESRCH: the process exited or
// called execve(2)). Throws Error naming `what` otherwise.
bool track_range(int uffd, std::uint64_t start, std::uint64_t end, const std::string& what);

// A run of pages that share their state.
// A page that is not written holds what it held at the last reset, whatever that was
// (a hole then is a hole still: the reset left a marker in its page table entry, which
// PAGEMAP_SCAN counts as swapped, so `present` is set for it too).
// `file` and `guard` tell a dump which pages hold nothing of the job's own: what
// /proc/PID/pagemap would report as PM_FILE and PM_GUARD_REGION, from the same walk.
struct PageStates {
  std::uint64_t start = 0, end = 0;  // [start, end), bytes, page aligned
  bool written = false;              // written since the last reset (or not tracked)
  bool present = false;  // in memory, swapped out, or a hole protected by the last reset
  bool file = false;     // a page of the mapped file or shared object (PAGE_IS_FILE)
  bool guard = false;    // a guard marker (MADV_GUARD_INSTALL; PAGE_IS_GUARD)
  // Not in memory (PAGE_IS_SWAPPED only): swapped out, or only a write-protect marker.
  // In a private file mapping the kernel leaves such a marker where it zaps a
  // protected page (MADV_DONTNEED, truncation): the page then shows the file again,
  // although the scan reports it unwritten.
  bool swapped = false;
};

// The state of every page in [start, end) of the process whose /proc/PID/pagemap is
// `pagemap`, in address order, with no gaps (a page that is neither written nor
// present is reported as such). With `reset`, the written pages are write-protected
// again in the same walk (PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC), so the next
// scan reports only what was written after this one. `file` is looked for only with
// `report_file` (it costs a lookup per page); `guard` only on a kernel that has
// PAGE_IS_GUARD (6.14; guard markers came with 6.13). Scans in as many calls as the
// kernel needs (it stops at a full result vector: walk_end). Throws Error naming
// `what` and the address on an ioctl failure.
std::vector<PageStates> scan_pages(int pagemap, std::uint64_t start, std::uint64_t end, bool reset,
                                   const std::string& what, bool report_file = false);

// The pages of [start, end) written since the last reset, in address order (each run
// with its `present`, `file` and `guard`; `written` set), write-protecting them again
// in the same walk (PM_SCAN_WP_MATCHING). Unlike scan_pages with `reset`, ranges no
// userfaultfd tracks are passed over, unreported and untouched, rather than failing
// the scan: for a job that is running, whose mappings may change between reading its
// maps and the walk. Throws Error naming `what`.
std::vector<PageStates> reset_written(int pagemap, std::uint64_t start, std::uint64_t end,
                                      const std::string& what);

}  // namespace fsched::ckpt
