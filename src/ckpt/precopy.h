// The pre-copy round of an incremental dump left running (issue 14,
// docs/incremental.md), as live migration does it: before the freeze, the pages the
// job wrote since the parent are found and write-protected again (PAGEMAP_SCAN with
// PM_SCAN_WP_MATCHING, written_pages.h) and copied out while the job runs. Under the
// freeze the dump then copies only the pages written since this round; the others it
// takes from here, into the stream after the thaw (ImageWriter::append_deferred).
//
// Why the copies stay true: the round resets a page before copying it, so a page the
// kernel still reports unwritten under the freeze holds what was copied. A process
// that exited, was replaced (another start time) or ran execve(2) since, a mapping
// made, moved or unmapped: none of these can report a copied page as unwritten (a
// mapping no userfaultfd tracks reads as written), so nothing stale is used.
//
// The round claims the job's tracking first (JobTracking::claim_for_pre_copy): it
// takes the tracking's lock, which the dump holds until it ends, so that no other
// dump resets the written bits meanwhile; the epoch reads "pre-copy <random>" from
// then on, and the dump is incremental only if it still reads so under the freeze. A
// dump that dies after this round leaves the next dump full rather than wrong.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "common/fd.h"

namespace fsched::ckpt {

class PreCopy {
 public:
  // Pages of one process written since the parent, as found (and reset) by the round:
  // under the freeze the dump takes each as written, whatever the kernel says since.
  struct Range {
    std::uint64_t start = 0, end = 0;  // bytes, page aligned
    // Their contents as copied (end - start bytes), or null: not copied (nothing of
    // the process's own there, a page of the mapped file or a hole; unmapped
    // meanwhile; the round's memory budget spent): the dump reads them under the
    // freeze if they hold something of its own then.
    const std::byte* data = nullptr;
    bool own = false;  // the round saw data of the process's own: to copy
  };
  struct Process {
    pid_t host_pid = 0;
    std::uint64_t start_time = 0;  // /proc/PID/stat field 22: a reused pid differs
    std::vector<Range> ranges;     // in address order, disjoint
  };

  // The round, on the running job whose init is `init_host_pid` and whose processes
  // (init included) are `host_pids`, when its tracking goes back to image `parent_id`;
  // at most `max_bytes` of memory are copied (the rest only found). nullopt, with the
  // job untouched, when its tracking names another image or none. Throws Error when
  // the tracking state cannot be read or written, or a process still alive cannot be
  // scanned; the tracking is then claimed already, so the dump must go on full.
  static std::optional<PreCopy> run(pid_t init_host_pid, std::span<const pid_t> host_pids,
                                    const std::string& parent_id, std::uint64_t max_bytes);

  // The epoch the round wrote, which the dump's JobTracking must find under the freeze.
  const std::string& epoch() const { return epoch_; }
  // Bytes of written pages found with data of the process's own, and of those copied.
  std::uint64_t found_bytes() const { return found_; }
  std::uint64_t copied_bytes() const { return copied_; }
  // The process with that host pid and start time; null when the round did not scan it.
  const Process* process(pid_t host_pid, std::uint64_t start_time) const;

 private:
  std::string epoch_;
  UniqueFd state_lock_;  // the claim's reference to the tracking state: holds its lock
  std::vector<Process> procs_;
  std::unique_ptr<std::byte[]> data_;
  std::uint64_t found_ = 0, copied_ = 0;
};

}  // namespace fsched::ckpt
