// The pre-copy round (precopy.h).
#include "ckpt/precopy.h"

#include <fcntl.h>
#include <sys/uio.h>

#include <algorithm>
#include <fmt/format.h>

#include "ckpt/mem_tracking.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "ckpt/written_pages.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {

namespace {

// A process of the job as the round sees it: its pid in the job and start time, or
// nullopt when it exited meanwhile.
struct Seen {
  int ns_pid;
  std::uint64_t start_time;
};
std::optional<Seen> see(pid_t host_pid) {
  try {
    auto st = read_status(host_pid);
    auto ns = parse_ints(st["NSpid"]);
    if (ns.empty()) return std::nullopt;
    return Seen{static_cast<int>(ns.back()), std::stoull(read_stat(host_pid).at(21))};
  } catch (const std::exception&) {  // Error reading /proc; a malformed stat field
    return std::nullopt;
  }
}

}  // namespace

std::optional<PreCopy> PreCopy::run(pid_t init_host_pid, std::span<const pid_t> host_pids,
                                    const std::string& parent_id, std::uint64_t max_bytes) {
  std::optional<JobTracking::Claim> claim =
      JobTracking::claim_for_pre_copy(init_host_pid, parent_id);
  if (!claim) return std::nullopt;
  PreCopy pc;
  pc.epoch_ = claim->state.epoch;
  pc.state_lock_ = std::move(claim->memfd);
  const TrackingState* state = &claim->state;
  // Find and reset, process by process: the tracked ones only (the others have no
  // userfaultfd; the dump stores all their pages anyway).
  for (pid_t host : host_pids) {
    const std::optional<Seen> seen = see(host);
    if (!seen) continue;
    const bool tracked = std::any_of(state->procs.begin(), state->procs.end(), [&](auto& t) {
      return t.pid == seen->ns_pid && t.start_time == seen->start_time;
    });
    if (!tracked) continue;
    const std::string who = fmt::format("process {} (pid {} in the job)", host, seen->ns_pid);
    UniqueFd pm(::open(fmt::format("/proc/{}/pagemap", host).c_str(), O_RDONLY | O_CLOEXEC));
    std::vector<MapsEntry> maps;
    try {
      if (!pm) fail_errno("{}: cannot open its pagemap", who);
      maps = read_maps(host);
    } catch (const Error&) {
      if (!see(host)) continue;  // exited: nothing of it to copy
      throw;
    }
    // From the first mapping to the end of the last one below the kernel's
    // ([vsyscall]): mappings made meanwhile are untracked, passed over by the walk.
    std::uint64_t lo = ~0ull, hi = 0;
    for (const MapsEntry& m : maps) {
      if (m.path == "[vsyscall]") continue;
      lo = std::min(lo, m.start);
      hi = std::max(hi, m.end);
    }
    Process p{host, seen->start_time, {}};
    if (lo < hi) {
      std::vector<PageStates> written;
      try {
        written = reset_written(pm.get(), lo, hi, who);
      } catch (const Error&) {
        // Exited meanwhile. Else some of its pages may be reset already and not
        // known here: the claim stands, so the dump goes on full.
        if (!see(host)) continue;
        throw;
      }
      for (const PageStates& w : written) {
        const bool own = w.present && !w.file && !w.guard;
        p.ranges.push_back({w.start, w.end, nullptr, own});
        if (own) pc.found_ += w.end - w.start;
      }
    }
    pc.procs_.push_back(std::move(p));
  }
  // Then copy, as much as the budget allows, while the job runs on.
  const std::uint64_t budget = std::min(pc.found_, max_bytes);
  if (budget == 0) return pc;
  pc.data_ = std::make_unique_for_overwrite<std::byte[]>(budget);
  std::uint64_t used = 0;
  for (Process& p : pc.procs_) {
    std::vector<iovec> iov;
    const std::uint64_t before = used;
    std::vector<Range*> to_copy;  // those of its ranges that fit, in order
    bool spent = false;
    for (Range& r : p.ranges) {
      if (!r.own) continue;
      if (used + (r.end - r.start) > budget) {
        spent = true;
        break;
      }
      iov.push_back({reinterpret_cast<void*>(r.start), r.end - r.start});
      to_copy.push_back(&r);
      used += r.end - r.start;
    }
    std::byte* const out = pc.data_.get() + before;
    bool whole = true;
    try {
      remote_readv(p.host_pid, iov, out);
    } catch (const Error&) {
      whole = false;
    }
    std::byte* at = out;
    for (std::size_t i = 0; i < to_copy.size(); ++i) {
      Range& r = *to_copy[i];
      if (!whole) {
        // A range unmapped meanwhile (or the process gone): each on its own; the ones
        // that fail are read under the freeze.
        try {
          remote_readv(p.host_pid, std::span(&iov[i], 1), at);
        } catch (const Error&) {
          at += r.end - r.start;
          continue;
        }
      }
      r.data = at;
      at += r.end - r.start;
      pc.copied_ += r.end - r.start;
    }
    if (spent) break;
  }
  return pc;
}

const PreCopy::Process* PreCopy::process(pid_t host_pid, std::uint64_t start_time) const {
  for (const Process& p : procs_)
    if (p.host_pid == host_pid && p.start_time == start_time) return &p;
  return nullptr;
}

}  // namespace fsched::ckpt
