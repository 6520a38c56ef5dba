// Semantic checks of a manifest, all run before the restore creates any process: an
// image whose HMAC holds can still come from a buggy or older dumper, and a value the
// restore would trust later (a page run past its mapping, a parent after its child, a
// stream shorter than its runs) must be refused while refusing is still free.
#include "ckpt/validate.h"

#include <sys/resource.h>

#include <set>

#include "ckpt/image.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kUserTop = 0x800000000000ULL;  // x86-64, 4-level page tables
constexpr std::uint64_t kMaxObjectBytes = 1ULL << 44;
constexpr int kMaxPid = 4194304;                        // PID_MAX_LIMIT
constexpr std::size_t kMaxGroups = 1024;                // what the injection area holds

template <typename... Args>
[[noreturn]] void bad(fmt::format_string<Args...> f, Args&&... args) {
  throw Error("image: " + fmt::format(f, std::forward<Args>(args)...) +
              " (the manifest is not one a dump writes)");
}

std::uint64_t runs_bytes(const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs,
                         std::uint64_t pages, const std::string& what) {
  std::uint64_t total = 0, next = 0;
  for (auto [first, count] : runs) {
    if (count == 0 || first < next || first > pages || count > pages - first)
      bad("{}: page run {}+{} outside its {} pages or out of order", what, first, count, pages);
    next = first + count;
    total += count * kPage;
  }
  return total;
}

}  // namespace

void validate_manifest(const Manifest& m, std::uint64_t stream_bytes) {
  if (m.processes.empty()) bad("no process");
  if (m.processes[0].pid != 1) bad("the first process is pid {}, not 1", m.processes[0].pid);
  std::set<int> pids;
  std::uint64_t stream = 0;
  for (auto& o : m.shm) {
    if (o.size > kMaxObjectBytes) bad("shared memory object {}: size {}", o.key, o.size);
    stream += runs_bytes(o.runs, (o.size + kPage - 1) / kPage, "shared memory object " + o.key);
  }
  for (auto& d : m.deleted_files) {
    if (d.size > kMaxObjectBytes) bad("deleted file {}: size {}", d.path, d.size);
    stream += runs_bytes(d.runs, (d.size + kPage - 1) / kPage, "deleted file " + d.path);
  }
  for (auto& s : m.sysv_shm) {
    if (s.size > kMaxObjectBytes) bad("SysV segment {}: size {}", s.id, s.size);
    stream += runs_bytes(s.runs, (s.size + kPage - 1) / kPage, fmt::format("SysV segment {}", s.id));
  }
  for (auto& p : m.processes) {
    if (p.pid < 1 || p.pid > kMaxPid || !pids.insert(p.pid).second)
      bad("process {}: bad or repeated pid", p.pid);
    if (p.pid != 1 && !pids.count(p.ppid)) bad("process {} comes before its parent {}", p.pid, p.ppid);
    if (p.zombie) continue;
    if (p.uids.size() != 4 || p.gids.size() != 4) bad("process {}: bad credentials", p.pid);
    if (p.groups.size() > kMaxGroups) bad("process {}: {} groups", p.pid, p.groups.size());
    if (p.threads.empty() || p.threads[0].tid != p.pid) bad("process {}: no leader thread", p.pid);
    std::set<int> tids;
    for (auto& t : p.threads) {
      if (t.tid < 1 || t.tid > kMaxPid || !tids.insert(t.tid).second)
        bad("process {}: bad or repeated thread id {}", p.pid, t.tid);
      if (t.regs.size() != 27) bad("thread {}: {} register words", t.tid, t.regs.size());
      if (t.xstate_hex.size() != 2 * m.xstate_size)
        bad("thread {}: xstate of {} hex digits, expected {}", t.tid, t.xstate_hex.size(),
            2 * m.xstate_size);
      for (auto& f : t.confinement.filters)
        if (f.prog_hex.empty() || f.prog_hex.size() % 16 || f.prog_hex.size() / 16 > 4096)
          bad("thread {}: malformed seccomp filter", t.tid);
    }
    for (auto& rl : p.rlimits)
      if (rl.resource < 0 || rl.resource >= RLIMIT_NLIMITS) bad("process {}: rlimit {}", p.pid, rl.resource);
    for (auto& a : p.sigactions)
      if (a.sig < 1 || a.sig > 64) bad("process {}: signal {}", p.pid, a.sig);
    if (p.auxv_hex.size() > 4096) bad("process {}: auxv too large", p.pid);
    std::uint64_t prev_end = 0;
    for (auto& v : p.vmas) {
      std::string what = fmt::format("process {} mapping {:#x}-{:#x}", p.pid, v.start, v.end);
      if (v.start % kPage || v.end % kPage || v.start >= v.end || v.end > kUserTop ||
          v.start < prev_end)
        bad("{}: not page aligned, empty, out of user space or overlapping", what);
      prev_end = v.end;
      if (v.path.size() >= 4096) bad("{}: path too long", what);
      stream += runs_bytes(v.runs, (v.end - v.start) / kPage, what);
    }
    std::set<int> fds;
    for (auto& f : p.fds) {
      if (f.fd < 0 || f.fd > (1 << 20) || !fds.insert(f.fd).second)
        bad("process {}: bad or repeated fd {}", p.pid, f.fd);
      if (f.path.size() >= 4096) bad("process {} fd {}: path too long", p.pid, f.fd);
      if (f.shared_fd >= 0 && !pids.count(f.shared_pid))
        bad("process {} fd {}: shares the fd of process {}, not restored before it", p.pid, f.fd,
            f.shared_pid);
    }
  }
  for (auto& pp : m.pipes) {
    if (pp.bytes > pp.capacity || pp.capacity > (1u << 31)) bad("pipe {}: {} of {} bytes", pp.ino, pp.bytes, pp.capacity);
    stream += pp.bytes;
  }
  for (auto& s : m.sockets) {
    if (s.name.size() >= 108) bad("unix socket {}: name too long", s.ino);
    if (!s.queued.empty() && !s.peer) bad("unix socket {}: queued data but no peer", s.ino);
    for (std::uint64_t len : s.queued) {
      if (len > (1u << 30)) bad("unix socket {}: message of {} bytes", s.ino, len);
      stream += len;
    }
  }
  if (stream != stream_bytes)
    bad("its parts hold {} bytes of page data, the page stream has {}", stream, stream_bytes);
}

}  // namespace fsched::ckpt
