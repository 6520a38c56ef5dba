// Memory: the VMA layout and page contents of each process (dump), and rebuilding
// the address space at the same addresses (restore). Only present pages are stored
// (/proc/PID/pagemap, see Documentation/admin-guide/mm/pagemap.rst); of private file
// mappings only the pages that differ from the file (the anonymous, copied-on-write
// ones); all-zero pages are not stored at all.
#include "ckpt/memory.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <linux/prctl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <set>

#include "ckpt/fsaccess.h"
#include "ckpt/madvise.h"
#include "ckpt/mem_tracking.h"
#include "ckpt/precopy.h"
#include "ckpt/mempolicy.h"
#include "ckpt/page_hashes.h"
#include "ckpt/page_restore.h"
#include "ckpt/parent_chain.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "ckpt/shmem.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::size_t kIoBytes = 4u << 20;  // read/write memory in pieces of this size

constexpr std::uint64_t kPmPresent = 1ULL << 63;
constexpr std::uint64_t kPmSwapped = 1ULL << 62;
constexpr std::uint64_t kPmFileOrShared = 1ULL << 61;

bool has_flag(const Vma& v, const char* f) {
  return std::find(v.vmflags.begin(), v.vmflags.end(), f) != v.vmflags.end();
}

// The name of the pseudo file system (proc(5), sysfs(5) ...) `path` is on, or nullptr.
const char* pseudo_fs(const std::string& path) {
  struct statfs sf {};
  if (::statfs(path.c_str(), &sf) < 0) return nullptr;  // stat just worked: leave it to mmap
  switch (static_cast<unsigned long>(sf.f_type)) {
    case PROC_SUPER_MAGIC:
      return "/proc (procfs)";
    case SYSFS_MAGIC:
      return "/sys (sysfs)";
    case DEBUGFS_MAGIC:
      return "debugfs";
    case TRACEFS_MAGIC:
      return "tracefs";
    case SECURITYFS_MAGIC:
      return "securityfs";
    case BPF_FS_MAGIC:
      return "bpffs";
    case HUGETLBFS_MAGIC:
      return "hugetlbfs";
    case CGROUP_SUPER_MAGIC:
    case CGROUP2_SUPER_MAGIC:
      return "cgroupfs";
    default:
      return nullptr;
  }
}

// Whether the restore writes pages into v (it is mapped writable until then).
bool filled(const Vma& v) { return !v.runs.empty() || !v.parent_runs.empty(); }

bool is_zero_page(const std::byte* p) {
  const auto* w = reinterpret_cast<const std::uint64_t*>(p);
  for (std::size_t i = 0; i < kPage / 8; i += 8) {
    if (w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7])
      return false;
  }
  return true;
}

}  // namespace

void dump_memory_layout(DumpProcess& p) {
  pid_t pid = p.host_pid;
  auto stat = read_stat(pid);
  auto f = [&](int i) { return std::stoull(stat.at(static_cast<std::size_t>(i))); };
  Process& r = p.rec;
  r.start_code = f(26);
  r.end_code = f(27);
  r.start_stack = f(28);
  r.start_data = f(45);
  r.end_data = f(46);
  r.start_brk = f(47);
  r.arg_start = f(48);
  r.arg_end = f(49);
  r.env_start = f(50);
  r.env_end = f(51);
  std::string auxv = read_file(fmt::format("/proc/{}/auxv", pid));
  r.auxv_hex = to_hex(auxv.data(), auxv.size());

  r.vmas.clear();
  for (auto& m : read_smaps(pid)) {
    if (m.path == "[vsyscall]") continue;
    Vma v;
    v.start = m.start;
    v.end = m.end;
    v.prot = (m.perms[0] == 'r' ? PROT_READ : 0) | (m.perms[1] == 'w' ? PROT_WRITE : 0) |
             (m.perms[2] == 'x' ? PROT_EXEC : 0);
    v.shared = m.perms[3] == 's';
    v.pgoff = m.pgoff;
    auto where = [&] {
      return fmt::format("process {} (pid {} in the job), mapping {:#x}-{:#x} {}", pid, r.pid,
                         m.start, m.end, m.path.empty() ? "[anon]" : m.path);
    };
    auto keep = [&] {
      dump_vma_flags(pid, m, v, where(), p.uffd_wp_ours);
      r.vmas.push_back(std::move(v));
    };
    if (m.path == "[vdso]") {
      v.kind = VmaKind::kVdso;
    } else if (m.path == "[vvar]") {
      v.kind = VmaKind::kVvar;
    } else if (m.path == "[vvar_vclock]") {
      v.kind = VmaKind::kVvarVclock;
    } else if (m.path == "[heap]") {
      v.kind = VmaKind::kHeap;
    } else if (m.path == "[stack]") {
      v.kind = VmaKind::kStack;
    } else if (m.path.empty() || m.path.rfind("[anon:", 0) == 0) {
      v.kind = VmaKind::kAnon;
    } else if (v.shared && is_shm_path(m.path)) {
      v.kind = VmaKind::kShm;
      v.shm_key = fmt::format("{}:{}", m.dev, m.ino);
      v.path = m.path;  // a named /dev/shm object is made again by this name (shmem.cpp)
    } else if (m.path[0] == '/') {
      if (m.path.rfind("/SYSV", 0) == 0 && v.shared) {
        // A shmat(2) attach; the inode number is the shmid. The segment itself is
        // dumped from the job's IPC namespace (sysvshm.cpp).
        v.kind = VmaKind::kSysv;
        v.shm_key = std::to_string(m.ino);
        bool may_write = std::find(m.vmflags.begin(), m.vmflags.end(), "mw") != m.vmflags.end();
        v.shmat_flags = (may_write ? 0 : SHM_RDONLY) | ((v.prot & PROT_EXEC) ? SHM_EXEC : 0);
        keep();
        continue;
      }
      if (m.path.rfind("/SYSV", 0) == 0)
        fail_unsupported("{}: this kind of shared memory mapping is not supported yet", where());
      // The ring of an AIO context (io_setup(2)) maps a file of the kernel's aio file
      // system; the context itself (its id is the ring's address) is the kernel's.
      if (m.path == "/[aio] (deleted)")
        fail_unsupported("{}: AIO context (io_setup(2)) not supported", where());
      if (m.path.ends_with(" (deleted)")) {
        // Deleted while mapped (or a memfd mapped privately): its contents are stored
        // once with the deleted files (deleted.cpp), the mapping maps the copy.
        v.kind = VmaKind::kFile;
        v.path = m.path.substr(0, m.path.size() - std::strlen(" (deleted)"));
        v.deleted_key = fmt::format("{}:{}", m.dev, m.ino);
        v.file = FileId{m.ino, 0, 0};
        keep();
        continue;
      }
      if (m.path.rfind("/memfd:", 0) == 0 || m.path.rfind("/dev/shm/", 0) == 0)
        fail_unsupported("{}: this kind of shared memory mapping is not supported yet", where());
      struct stat st {};
      if (::stat(m.path.c_str(), &st) < 0) fail_errno("{}: cannot stat the mapped file", where());
      if (!S_ISREG(st.st_mode))
        fail_unsupported("{}: mapping of a device is not supported", where());
      // Files of the kernel's pseudo file systems are regular files too, but what a
      // mapping of one shows is the kernel's, made for this process: the restore could
      // only map whatever the path gives then.
      if (const char* fs = pseudo_fs(m.path))
        fail_unsupported("{}: mapping of a file of {} is not supported", where(), fs);
      if (st.st_ino != m.ino)
        fail_unsupported("{}: the file at this path was replaced after it was mapped", where());
      v.kind = VmaKind::kFile;
      v.path = m.path;
      v.file = file_id_of(st);
    } else {
      fail_unsupported(
          "{}: this special mapping (a kernel object's, e.g. io_uring rings) is not "
          "supported",
          where());
    }
    if (v.shared && v.kind != VmaKind::kFile && v.kind != VmaKind::kShm)
      fail_unsupported("{}: this shared mapping is not supported", where());
    keep();
  }
  r.vmflags_all = true;
}

void dump_memory_injected(DumpProcess& p) {
  p.rec.brk = static_cast<std::uint64_t>(p.inj->call_ok("brk(0)", SYS_brk, 0));
}

namespace {
std::uint64_t dump_pages_impl(DumpProcess& p, ImageWriter& img, JobTracking* tracking,
                              bool incremental, PageHashing* hashing, const PreCopy* pre,
                              bool running);
}  // namespace

std::uint64_t dump_pages(DumpProcess& p, ImageWriter& img, JobTracking* tracking, bool incremental,
                         PageHashing* hashing, const PreCopy* pre) {
  return dump_pages_impl(p, img, tracking, incremental, hashing, pre, false);
}

std::uint64_t dump_pages_running(DumpProcess& p, ImageWriter& img, PageHashing* hashing) {
  return dump_pages_impl(p, img, nullptr, false, hashing, nullptr, true);
}

namespace {
std::uint64_t dump_pages_impl(DumpProcess& p, ImageWriter& img, JobTracking* tracking,
                              bool incremental, PageHashing* hashing, const PreCopy* pre,
                              bool running) {
  pid_t pid = p.host_pid;
  // The pre-copy round's pages of this process (the same one: pid and start time).
  const PreCopy::Process* copied = nullptr;
  if (pre && incremental && tracking)
    copied = pre->process(pid, std::stoull(read_stat(pid).at(21)));
  UniqueFd pagemap(::open(fmt::format("/proc/{}/pagemap", pid).c_str(), O_RDONLY | O_CLOEXEC));
  if (!pagemap && running && errno == ENOENT) {  // exited since the freeze: nothing to keep
    for (Vma& v : p.rec.vmas) v.runs.clear();
    return 0;
  }
  if (!pagemap) fail_errno("cannot open /proc/{}/pagemap", pid);
  UniqueFd mem;  // for mappings without read permission, which process_vm_readv refuses
  std::vector<std::uint64_t> pm(kIoBytes / kPage);
  std::vector<std::byte> one_page(kPage);
  std::vector<iovec> remote;
  std::uint64_t stored = 0;
  ParentHashes::Cursor parent_hash;  // of this process, in address order
  if (hashing && hashing->parent) parent_hash = hashing->parent->cursor(p.rec.pid);

  for (Vma& v : p.rec.vmas) {
    v.runs.clear();
    v.parent_runs.clear();
    v.track = TrackMethod::kNone;
    if (is_kernel_mapping(v.kind)) continue;
    if (v.shared) continue;  // its contents are the file's or the shm object's
    if (hashing) v.track = TrackMethod::kHash;
    const bool file = v.kind == VmaKind::kFile;
    // A page left out is zero after the restore only where the restore maps zeros:
    // anonymous memory. A private mapping of a file or memory object shows the
    // object's contents there, so a page copied on write keeps its zeros in the image.
    const bool zero_is_hole =
        v.kind == VmaKind::kAnon || v.kind == VmaKind::kHeap || v.kind == VmaKind::kStack;
    const std::uint64_t npages = (v.end - v.start) / kPage;
    std::set<std::uint64_t> unread;  // running: pages of a range unmapped meanwhile
    // Of a tracked VMA: the state of each page since the last reset (which this scan
    // also is), from one walk of its page table that also says which pages hold
    // anything, so that pagemap need not be read.
    std::optional<std::vector<PageStates>> states;
    if (tracking) states = tracking->reset_scan(p, v.start, v.end, file);
    if (states && incremental) v.track = TrackMethod::kKernel;

    // Reads the pages idx[k, k + n) of this VMA to dst.
    auto read_pages = [&](const std::vector<std::uint64_t>& idx, std::size_t k, std::size_t n,
                          std::byte* dst) {
      remote.clear();
      for (std::size_t i = k; i < k + n; ++i) {
        std::uint64_t addr = v.start + idx[i] * kPage;
        if (!remote.empty() &&
            reinterpret_cast<std::uint64_t>(remote.back().iov_base) + remote.back().iov_len == addr)
          remote.back().iov_len += kPage;
        else
          remote.push_back({reinterpret_cast<void*>(addr), kPage});
      }
      if ((v.prot & PROT_READ) && !running) return remote_readv(pid, remote, dst);
      std::size_t done = 0;
      if (!mem) {
        mem.reset(::open(fmt::format("/proc/{}/mem", pid).c_str(), O_RDONLY | O_CLOEXEC));
        if (!mem) fail_errno("cannot open /proc/{}/mem", pid);
      }
      for (auto& io : remote) {
        const auto at = reinterpret_cast<std::uint64_t>(io.iov_base);
        ssize_t got = ::pread(mem.get(), dst + done, io.iov_len, static_cast<off_t>(at));
        if (got != static_cast<ssize_t>(io.iov_len)) {
          if (!running || (got >= 0 || errno != EIO))
            fail_errno("cannot read memory of process {} at {:#x}", pid, at);
          // Unmapped by the running job since the freeze: left out.
          for (std::uint64_t a = at; a < at + io.iov_len; a += kPage)
            unread.insert((a - v.start) / kPage);
        }
        done += io.iov_len;
      }
    };
    // Drops the all-zero pages among the n just read to dst, and with hashing those
    // the parent holds as they are (recorded as parent runs), moving the others down,
    // and records them as runs of the VMA; returns the bytes kept.
    auto keep_nonzero = [&](const std::vector<std::uint64_t>& idx, std::size_t k, std::size_t n,
                            std::byte* dst) {
      std::size_t kept = 0;
      for (std::size_t i = 0; i < n; ++i) {
        std::byte* page = dst + i * kPage;
        if (!unread.empty() && unread.count(idx[k + i])) continue;
        if (zero_is_hole && is_zero_page(page)) continue;
        if (hashing) {
          const PageHash h = hash_page(page);
          hashing->out.push_back(h);
          const PageHash* was = parent_hash.find(v.start + idx[k + i] * kPage);
          if (was && *was == h) {
            const std::uint64_t at = idx[k + i];
            if (!v.parent_runs.empty() &&
                v.parent_runs.back().first + v.parent_runs.back().second == at)
              ++v.parent_runs.back().second;
            else
              v.parent_runs.emplace_back(at, 1);
            continue;
          }
        }
        if (kept != i) std::memmove(dst + kept * kPage, page, kPage);
        ++kept;
        std::uint64_t at = idx[k + i];
        if (!v.runs.empty() && v.runs.back().first + v.runs.back().second == at)
          ++v.runs.back().second;
        else
          v.runs.emplace_back(at, 1);
      }
      return kept * kPage;
    };

    std::vector<std::uint64_t> idx;  // page index (within the VMA) of each page to store
    // Stores the pages idx names, read straight into the writer's chunk buffer: one
    // copy of the job's memory fewer than reading into a buffer of our own.
    auto store = [&] {
      for (std::size_t k = 0; k < idx.size();) {
        auto space = img.append_space();
        std::size_t fit = std::min(space.size() / kPage, idx.size() - k);
        std::size_t kept;
        if (fit == 0) {  // less than a page left in the chunk (after an unaligned append)
          read_pages(idx, k, 1, one_page.data());
          img.append_done(0);
          kept = keep_nonzero(idx, k, 1, one_page.data());
          img.append_pages(std::span(one_page.data(), kept));
          fit = 1;
        } else {
          read_pages(idx, k, fit, space.data());
          kept = keep_nonzero(idx, k, fit, space.data());
          img.append_done(kept);
        }
        stored += kept;
        k += fit;
      }
      idx.clear();
    };
    // Pages of the pre-copy round to append (deferred), in address order from
    // deferred_at: the source of each of those consecutive pages.
    std::vector<const std::byte*> deferred;
    std::uint64_t deferred_at = 0;
    auto flush_deferred = [&] {
      if (deferred.empty()) return;
      const std::uint64_t at = (deferred_at - v.start) / kPage;
      if (!v.runs.empty() && v.runs.back().first + v.runs.back().second == at)
        v.runs.back().second += deferred.size();
      else
        v.runs.emplace_back(at, deferred.size());
      const std::size_t bytes = deferred.size() * kPage;
      img.append_deferred(bytes,
                          [src = std::move(deferred)](std::uint64_t off, std::span<std::byte> dst) {
                            for (std::size_t done = 0; done < dst.size();) {
                              const std::uint64_t o = off + done;
                              const std::size_t in_page = static_cast<std::size_t>(o % kPage);
                              const std::size_t k = std::min(kPage - in_page, dst.size() - done);
                              std::memcpy(dst.data() + done, src[o / kPage] + in_page, k);
                              done += k;
                            }
                          });
      stored += bytes;
      deferred = {};
    };
    auto fresh = [&](std::uint64_t a) {
      flush_deferred();
      idx.push_back((a - v.start) / kPage);
      if (idx.size() == pm.size()) store();
    };
    auto from_parent = [&](std::uint64_t s, std::uint64_t e) {
      if (s >= e) return;
      const std::uint64_t at = (s - v.start) / kPage, n = (e - s) / kPage;
      if (!v.parent_runs.empty() && v.parent_runs.back().first + v.parent_runs.back().second == at)
        v.parent_runs.back().second += n;
      else
        v.parent_runs.emplace_back(at, n);
    };
    // A page is stored when it is the job's own (not the mapped file's) and in memory
    // or swapped out, unless the parent chain has it (not written since the last reset,
    // nor found written by the pre-copy round, which reset it: its copy is stored).
    if (states) {
      std::size_t r = 0;  // the next of copied->ranges that may overlap
      if (copied)
        r = static_cast<std::size_t>(
            std::lower_bound(copied->ranges.begin(), copied->ranges.end(), v.start,
                             [](const PreCopy::Range& c, std::uint64_t a) { return c.end <= a; }) -
            copied->ranges.begin());
      for (const PageStates& s : *states) {
        if (!s.present) continue;
        const bool own = !s.guard && !(file && s.file);
        if (!incremental || s.written) {
          if (own)
            for (std::uint64_t a = s.start; a < s.end; a += kPage) fresh(a);
          continue;
        }
        // Not written since the last reset: the parent chain's, unless the pre-copy
        // round found it written (and reset it): then it is a written page, stored
        // from the round's copy when it has one.
        std::uint64_t cur = s.start;
        if (copied) {
          const auto& ranges = copied->ranges;
          while (r < ranges.size() && ranges[r].end <= s.start) ++r;
          for (; r < ranges.size() && ranges[r].start < s.end; ++r) {
            const PreCopy::Range& c = ranges[r];
            const std::uint64_t lo = std::max(c.start, s.start), hi = std::min(c.end, s.end);
            from_parent(cur, lo);
            for (std::uint64_t a = lo; a < hi && own; a += kPage) {
              // The round's copy of a page of a private file mapping may be of a page
              // zapped since, which shows the file again, while the scan reports the
              // kernel's marker there as unwritten (PageStates::swapped): read again.
              if (!c.data || file) {
                fresh(a);
                continue;
              }
              store();
              if (!deferred.empty() && deferred_at + deferred.size() * kPage != a) flush_deferred();
              if (deferred.empty()) deferred_at = a;
              deferred.push_back(c.data + (a - c.start));
            }
            cur = hi;
            if (c.end > s.end) break;  // it goes on into the next state range
          }
        }
        from_parent(cur, s.end);
      }
      store();
      flush_deferred();
      continue;
    }
    for (std::uint64_t first = 0; first < npages; first += pm.size()) {
      const std::uint64_t n = std::min<std::uint64_t>(pm.size(), npages - first);
      const off_t off = static_cast<off_t>((v.start / kPage + first) * 8);
      ssize_t got = ::pread(pagemap.get(), pm.data(), n * 8, off);
      if (got != static_cast<ssize_t>(n * 8))
        fail_errno("cannot read /proc/{}/pagemap at {:#x}", pid, v.start + first * kPage);
      for (std::uint64_t i = 0; i < n; ++i) {
        std::uint64_t e = pm[i];
        if (e & kPmGuardRegion) continue;  // no page: a guard marker (v.guards)
        if ((e & kPmSwapped) || ((e & kPmPresent) && !(file && (e & kPmFileOrShared))))
          idx.push_back(first + i);
      }
      store();
    }
  }
  return stored;
}
}  // namespace

// ---- restore ------------------------------------------------------------------------

namespace {

// Moves [vvar], [vvar_vclock] and [vdso] of the helper to the saved addresses, keeping
// their relative layout, which the vDSO code depends on.
void move_vdso(RestoreProcess& p, const InjectionArea& area, const std::vector<MapsEntry>& cur) {
  Injector& inj = p.leader();
  struct Special {
    std::uint64_t cur_start = 0, size = 0, saved_start = 0;
    bool have_cur = false, have_saved = false;
  };
  std::map<std::string, Special> sp;
  for (auto& m : cur)
    if (m.path == "[vdso]" || m.path == "[vvar]" || m.path == "[vvar_vclock]") {
      auto& s = sp[m.path.substr(1, m.path.size() - 2)];
      s.cur_start = m.start;
      s.size = m.end - m.start;
      s.have_cur = true;
    }
  for (auto& v : p.rec->vmas)
    if (is_kernel_mapping(v.kind)) {
      auto& s = sp[std::string(to_string(v.kind))];
      if (s.have_cur && s.size != v.end - v.start)
        fail("process {}: the [{}] area is {} bytes here but {} in the image (another kernel?)",
             p.rec->pid, to_string(v.kind), s.size, v.end - v.start);
      s.saved_start = v.start;
      s.have_saved = true;
    }
  std::int64_t delta = 0;
  bool first = true;
  std::uint64_t lo = ~0ULL, hi = 0, slo = ~0ULL, shi = 0;
  for (auto& [name, s] : sp) {
    if (s.have_cur != s.have_saved)
      fail("process {}: [{}] is {} the image but {} on this kernel", p.rec->pid, name,
           s.have_saved ? "in" : "not in", s.have_cur ? "present" : "absent");
    std::int64_t d = static_cast<std::int64_t>(s.saved_start - s.cur_start);
    if (!first && d != delta)
      fail("process {}: the vDSO layout differs from the image's (another kernel?)", p.rec->pid);
    delta = d;
    first = false;
    lo = std::min(lo, s.cur_start);
    hi = std::max(hi, s.cur_start + s.size);
    slo = std::min(slo, s.saved_start);
    shi = std::max(shi, s.saved_start + s.size);
  }
  if (sp.empty() || delta == 0) return;
  auto move_all = [&](std::uint64_t from_base, std::uint64_t to_base) {
    for (auto& [name, s] : sp) {
      std::uint64_t from = s.cur_start - lo + from_base, to = s.cur_start - lo + to_base;
      inj.call_ok(fmt::format("mremap of [{}] to {:#x}", name, to), SYS_mremap, from, s.size,
                  s.size, MREMAP_MAYMOVE | MREMAP_FIXED, to);
    }
  };
  if (slo < hi && lo < shi) {
    // Overlapping move: go through a free spot right after the injection area.
    std::uint64_t tmp = area.addr + area.size + (1ULL << 30);
    move_all(lo, tmp);
    move_all(tmp, slo);
  } else {
    move_all(lo, slo);
  }
}

}  // namespace

void restore_memory(RestoreProcess& p, const InjectionArea& area, PageReader& pages,
                    const ShmTable& shm, ParentChain* chain) {
  Injector& inj = p.leader();
  const Process& r = *p.rec;
  pid_t hp = p.host_pid;

  // 1. Drop everything the helper had but the injection area and the vDSO.
  auto cur = read_maps(hp);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> keep{{area.addr, area.addr + area.size}};
  for (auto& m : cur)
    if (m.path == "[vdso]" || m.path == "[vvar]" || m.path == "[vvar_vclock]" ||
        m.path == "[vsyscall]")
      keep.emplace_back(m.start, m.end);
  std::sort(keep.begin(), keep.end());
  std::uint64_t at = 0;
  constexpr std::uint64_t kTop = 0x7ffffffff000ULL;
  for (auto& [s, e] : keep) {
    if (s >= kTop) break;
    if (s > at) inj.call_ok("munmap of the helper's memory", SYS_munmap, at, s - at);
    at = std::max(at, e);
  }
  if (at < kTop) inj.call_ok("munmap of the helper's memory", SYS_munmap, at, kTop - at);

  // 2. The vDSO to its saved place.
  move_vdso(p, area, cur);

  // 3. Every saved VMA, writable for now where pages are to be filled.
  long file_fd = -1;
  int file_oflags = O_RDONLY;
  std::string file_path;
  auto close_file = [&] {
    if (file_fd >= 0) inj.call(SYS_close, static_cast<std::uint64_t>(file_fd));
    file_fd = -1;
    file_path.clear();
  };
  for (const Vma& v : r.vmas) {
    if (is_kernel_mapping(v.kind)) continue;
    int prot = v.prot | (filled(v) ? PROT_READ | PROT_WRITE : 0);
    int flags = MAP_FIXED | (v.shared ? MAP_SHARED : MAP_PRIVATE);
    if (has_flag(v, "gd")) flags |= MAP_GROWSDOWN;
    if (has_flag(v, "nr")) flags |= MAP_NORESERVE;
    std::string what = fmt::format("process {}: mmap of {:#x}-{:#x} {}", r.pid, v.start, v.end,
                                   v.path.empty() ? std::string(to_string(v.kind)) : v.path);
    if (v.kind == VmaKind::kSysv) {
      // One shmat(2) maps the whole segment, at the start of its first piece; the
      // other pieces of the attach (split by mprotect) come with it.
      close_file();
      if (v.pgoff != 0) continue;
      long got = inj.call(SYS_shmat, static_cast<std::uint64_t>(std::stol(v.shm_key)), v.start,
                          static_cast<std::uint64_t>(v.shmat_flags));
      if (got < 0) throw Error(what + ": shmat", static_cast<int>(-got));
      if (static_cast<std::uint64_t>(got) != v.start)
        fail("{}: shmat attached it at {:#x}", what, got);
    } else if (v.kind == VmaKind::kShm || !v.deleted_key.empty()) {
      close_file();
      long fd = take_from_init(
          inj, shm_fd_in_init(shm, v.kind == VmaKind::kShm ? v.shm_key : v.deleted_key), what);
      long mr =
          inj.call(SYS_mmap, v.start, v.end - v.start, static_cast<std::uint64_t>(prot),
                   static_cast<std::uint64_t>(flags), static_cast<std::uint64_t>(fd), v.pgoff);
      inj.call(SYS_close, static_cast<std::uint64_t>(fd));
      if (mr < 0) throw Error(what, static_cast<int>(-mr));
    } else if (v.kind == VmaKind::kFile) {
      // A shared mapping that may be made writable (VmFlags mw: the job opened the file
      // for writing, whatever the protection now) needs the file open for writing, or
      // mmap refuses it, and the job's later mprotect(PROT_WRITE) would fail.
      int oflags = (v.shared && ((v.prot & PROT_WRITE) || has_flag(v, "mw"))) ? O_RDWR : O_RDONLY;
      // A flock held through the mapping's own description needs a description of its
      // own: the one the lock is taken on and the mapping keeps (locks.h).
      if (v.path != file_path || oflags != file_oflags || v.flock) {
        close_file();
        file_oflags = oflags;
        std::string who = fmt::format("process {}: mapped file", r.pid);
        file_fd = open_no_symlinks(inj, hp, area, v.path, oflags, 0, who);
        file_path = v.path;
        check_identity(hp, file_fd, v.file, SizeRule::kSame, p.image->boot_id, who);
      }
      if (v.flock) {
        if (v.flock != LOCK_SH && v.flock != LOCK_EX)
          fail_image("image: {}: flock type {} is neither LOCK_SH nor LOCK_EX", what, v.flock);
        long rc = inj.call(SYS_flock, static_cast<std::uint64_t>(file_fd),
                           static_cast<std::uint64_t>(v.flock | LOCK_NB));
        if (rc < 0)
          throw Error(fmt::format("{}: flock {} again (a process outside the job holds a "
                                  "conflicting lock now?)",
                                  what, v.flock == LOCK_EX ? "LOCK_EX" : "LOCK_SH"),
                      static_cast<int>(-rc));
      }
      inj.call_ok(what, SYS_mmap, v.start, v.end - v.start, static_cast<std::uint64_t>(prot),
                  static_cast<std::uint64_t>(flags), static_cast<std::uint64_t>(file_fd), v.pgoff);
    } else {
      inj.call_ok(what, SYS_mmap, v.start, v.end - v.start, static_cast<std::uint64_t>(prot),
                  static_cast<std::uint64_t>(flags | MAP_ANONYMOUS), -1ULL, 0);
    }
  }
  close_file();
  // Memory policies before the pages are written, so that the pages land where the
  // policy says.
  for (const Vma& v : r.vmas)
    if (v.mempolicy != MemPolicy{})
      restore_vma_mempolicy(inj, hp, area, v,
                            fmt::format("process {}: mapping {:#x}-{:#x}", r.pid, v.start, v.end));

  // 4. Page contents, in the order they were dumped: every run of every VMA in a few
  // process_vm_writev(2) calls, from the reader's chunks or the image's page cache.
  std::vector<iovec> runs;
  for (const Vma& v : r.vmas) {
    for (auto [first, count] : v.runs) {
      std::uint64_t addr = v.start + first * kPage;
      if (addr >= v.end || count > (v.end - addr) / kPage)
        fail_image("image: page run beyond mapping {:#x}-{:#x}", v.start, v.end);
      runs.push_back({reinterpret_cast<void*>(addr), count * kPage});
    }
  }
  copy_to_process(pages, hp, runs);
  std::vector<std::pair<std::uint64_t, std::uint64_t>> from_parent;
  for (const Vma& v : r.vmas)
    for (auto [first, count] : v.parent_runs) {
      std::uint64_t addr = v.start + first * kPage;
      if (addr >= v.end || count > (v.end - addr) / kPage)
        fail_image("image: parent page run beyond mapping {:#x}-{:#x}", v.start, v.end);
      from_parent.emplace_back(addr, addr + count * kPage);
    }
  if (!from_parent.empty()) {
    if (!chain) fail_image("image: process {} has pages in a parent image but no parent", r.pid);
    std::sort(from_parent.begin(), from_parent.end());
    chain->fill(r.pid, hp, std::move(from_parent));
  }

  // 5. Final protections and madvise(2) flags.
  for (const Vma& v : r.vmas) {
    if (is_kernel_mapping(v.kind)) continue;
    int tmp = v.prot | (filled(v) ? PROT_READ | PROT_WRITE : 0);
    if (v.kind == VmaKind::kSysv)
      tmp = PROT_READ | ((v.shmat_flags & SHM_RDONLY) ? 0 : PROT_WRITE) |
            ((v.shmat_flags & SHM_EXEC) ? PROT_EXEC : 0);
    if (tmp != v.prot)
      inj.call_ok(fmt::format("mprotect {:#x}", v.start), SYS_mprotect, v.start, v.end - v.start,
                  static_cast<std::uint64_t>(v.prot));
    restore_vma_advice(inj, r.pid, v);
  }

  // 6. Heap, arguments, environment, auxv and /proc/PID/exe (prctl(2) PR_SET_MM_MAP).
  auto auxv = from_hex(r.auxv_hex);
  constexpr std::size_t kAuxvOff = 8192, kMapOff = 4096;
  if (auxv.size() > 2048) fail_image("image: auxv of process {} too large", r.pid);
  remote_write(hp, area.data() + kAuxvOff, auxv.data(), auxv.size());
  std::string exe_who = fmt::format("process {}: executable", r.pid);
  long exe_fd = open_no_symlinks(inj, hp, area, r.exe, O_RDONLY, 0, exe_who);
  check_identity(hp, exe_fd, r.exe_file, SizeRule::kSame, p.image->boot_id, exe_who);
  prctl_mm_map mm{};
  mm.start_code = r.start_code;
  mm.end_code = r.end_code;
  mm.start_data = r.start_data;
  mm.end_data = r.end_data;
  mm.start_brk = r.start_brk;
  mm.brk = r.brk;
  mm.start_stack = r.start_stack;
  mm.arg_start = r.arg_start;
  mm.arg_end = r.arg_end;
  mm.env_start = r.env_start;
  mm.env_end = r.env_end;
  mm.auxv = reinterpret_cast<__u64*>(area.data() + kAuxvOff);
  mm.auxv_size = static_cast<__u32>(auxv.size());
  mm.exe_fd = static_cast<__u32>(exe_fd);
  remote_write(hp, area.data() + kMapOff, &mm, sizeof mm);
  inj.call_ok(fmt::format("process {}: prctl(PR_SET_MM_MAP)", r.pid), SYS_prctl, PR_SET_MM,
              PR_SET_MM_MAP, area.data() + kMapOff, sizeof mm);
  inj.call(SYS_close, static_cast<std::uint64_t>(exe_fd));
}

void unmap_injection_area(RestoreProcess& p, const InjectionArea& area) {
  p.leader().call_ok("munmap of the injection area", SYS_munmap, area.addr, area.size);
}

}  // namespace fsched::ckpt
