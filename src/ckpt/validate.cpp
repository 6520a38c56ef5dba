// Semantic checks of a manifest, all run before the restore creates any process: an
// image whose HMAC holds can still come from a buggy or older dumper, and a value the
// restore would trust later (a page run past its mapping, a parent after its child, a
// stream shorter than its runs) must be refused while refusing is still free.
#include "ckpt/validate.h"

#include <sys/socket.h>

#include <sys/resource.h>

#include <array>
#include <optional>
#include <set>

#include "ckpt/image.h"
#include "ckpt/page_hashes.h"
#include "ckpt/sections.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kUserTop = 0x800000000000ULL;  // x86-64, 4-level page tables
constexpr std::uint64_t kMaxObjectBytes = 1ULL << 44;
constexpr int kMaxPid = 4194304;          // PID_MAX_LIMIT
constexpr std::size_t kMaxGroups = 1024;  // what the injection area holds

template <typename... Args>
[[noreturn]] void bad(fmt::format_string<Args...> f, Args&&... args) {
  throw ImageError("image: " + fmt::format(f, std::forward<Args>(args)...) +
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

// Manifest "sections": every section of kSectionOrder, in that order, each once, at
// offsets that grow by exactly the bytes its parts hold (`sizes`, in kSectionOrder),
// the last one ending where the stream does (so none starts past its end).
void check_sections(const std::vector<SectionStart>& sections,
                    const std::array<std::uint64_t, kSectionOrder.size()>& sizes,
                    std::uint64_t stream_bytes) {
  std::uint64_t prev = 0;
  for (std::size_t i = 0; i < sections.size(); ++i) {
    const SectionStart& s = sections[i];
    std::optional<Section> sec = section_from_name(s.name);
    if (!sec) bad("page-stream section {}: unknown name \"{}\"", i, s.name);
    if (i >= kSectionOrder.size() || *sec != kSectionOrder[i])
      bad("page-stream section {} is \"{}\", expected \"{}\" (the sections go in the one "
          "order of sections.h, each once)",
          i, s.name, i < kSectionOrder.size() ? section_name(kSectionOrder[i]) : "none");
    if (s.offset < prev)
      bad("page-stream section \"{}\" starts at offset {}, before the one before it ({})", s.name,
          s.offset, prev);
    if (s.offset > stream_bytes)
      bad("page-stream section \"{}\" starts at offset {}, past the end of the stream ({})", s.name,
          s.offset, stream_bytes);
    prev = s.offset;
  }
  // Images before format 11 end without "page_hashes"; one that hashes nothing may too.
  const bool no_hashes = sections.size() + 1 == kSectionOrder.size() &&
                         kSectionOrder.back() == Section::kPageHashes && sizes.back() == 0;
  if (sections.size() != kSectionOrder.size() && !no_hashes)
    bad("{} page-stream sections, expected {} (\"{}\" missing)", sections.size(),
        kSectionOrder.size(), section_name(kSectionOrder[sections.size()]));
  for (std::size_t i = 0; i < sections.size(); ++i) {
    std::uint64_t end = i + 1 < sections.size() ? sections[i + 1].offset : stream_bytes;
    if (end - sections[i].offset != sizes[i])
      bad("page-stream section \"{}\" spans {} bytes (offset {} to {}), its parts hold {}",
          sections[i].name, end - sections[i].offset, sections[i].offset, end, sizes[i]);
  }
}

}  // namespace

void validate_manifest(const Manifest& m, std::uint64_t stream_bytes) {
  if (m.processes.empty()) bad("no process");
  if (m.processes[0].pid != 1) bad("the first process is pid {}, not 1", m.processes[0].pid);
  std::set<int> pids;
  // Bytes of page data of each section, in kSectionOrder.
  std::array<std::uint64_t, kSectionOrder.size()> sizes{};
  auto section = [&](Section s) -> std::uint64_t& { return sizes[section_index(s)]; };
  // A shared memory object, deleted file or SysV segment: its stored pages in `sec`,
  // and with hashes one per page it holds (stored or from the parent) in "page_hashes".
  auto object = [&](const auto& o, Section sec, const std::string& what) {
    if (o.size > kMaxObjectBytes) bad("{}: size {}", what, o.size);
    const std::uint64_t pages = (o.size + kPage - 1) / kPage;
    const std::uint64_t stored = runs_bytes(o.runs, pages, what);
    section(sec) += stored;
    const std::uint64_t from_parent = runs_bytes(o.parent_runs, pages, what + " (parent)");
    if (o.track == TrackMethod::kHash)
      section(Section::kPageHashes) += (stored + from_parent) / kPage * kPageHashBytes;
  };
  for (auto& o : m.shm) object(o, Section::kShm, "shared memory object " + o.key);
  for (auto& d : m.deleted_files) object(d, Section::kDeletedFiles, "deleted file " + d.path);
  for (auto& s : m.sysv_shm) object(s, Section::kSysvShm, fmt::format("SysV segment {}", s.id));
  for (auto& p : m.processes) {
    if (p.pid < 1 || p.pid > kMaxPid || !pids.insert(p.pid).second)
      bad("process {}: bad or repeated pid", p.pid);
    if (p.pid != 1 && !pids.count(p.ppid))
      bad("process {} comes before its parent {}", p.pid, p.ppid);
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
      if (rl.resource < 0 || rl.resource >= RLIMIT_NLIMITS)
        bad("process {}: rlimit {}", p.pid, rl.resource);
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
      const std::uint64_t pages = (v.end - v.start) / kPage;
      section(Section::kPages) += runs_bytes(v.runs, pages, what);
      const std::uint64_t from_parent = runs_bytes(v.parent_runs, pages, what + " (parent)");
      if (v.track == TrackMethod::kHash)
        section(Section::kPageHashes) +=
            (runs_bytes(v.runs, pages, what) + from_parent) / kPage * kPageHashBytes;
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
    if (pp.bytes > pp.capacity || pp.capacity > (1u << 31))
      bad("pipe {}: {} of {} bytes", pp.ino, pp.bytes, pp.capacity);
    section(Section::kPipes) += pp.bytes;
  }
  for (auto& s : m.sockets) {
    if (s.name.size() >= 108) bad("unix socket {}: name too long", s.ino);
    if (!s.queued.empty() && !s.peer && !s.peer_gone)
      bad("unix socket {}: queued data but no peer", s.ino);
    if (s.peer_gone && (s.peer || s.type == SOCK_DGRAM))
      bad("unix socket {}: its peer is both gone and {}", s.ino, s.peer);
    for (const ScmRights& r : s.rights) {
      if (r.msg >= s.queued.size() || r.fds.empty() || r.fds.size() > 253)
        bad("unix socket {}: {} files in flight in message {} of {}", s.ino, r.fds.size(), r.msg,
            s.queued.size());
      for (const InFlightFd& x : r.fds)
        if (x.pid ? !pids.count(x.pid) || x.fd < 0
                  : x.file < 0 || static_cast<std::size_t>(x.file) >= m.in_flight.size())
          bad("unix socket {}: a file in flight names process {} fd {} / file {}", s.ino, x.pid,
              x.fd, x.file);
    }
    for (std::uint64_t len : s.queued) {
      if (len > (1u << 30)) bad("unix socket {}: message of {} bytes", s.ino, len);
      section(Section::kSockets) += len;
    }
  }
  for (const Fd& f : m.in_flight)
    if ((f.kind != FdKind::kFile && f.kind != FdKind::kDir && f.kind != FdKind::kChr) ||
        f.path.empty() || f.path[0] != '/' || f.path.size() >= 4096 || !f.deleted_key.empty())
      bad("a file in flight: kind {}, path {}", to_string(f.kind), f.path);
  std::uint64_t stream = 0;
  for (std::uint64_t n : sizes) stream += n;
  if (stream != stream_bytes)
    bad("its parts hold {} bytes of page data, the page stream has {}", stream, stream_bytes);
  check_sections(m.sections, sizes, stream_bytes);
}

}  // namespace fsched::ckpt
