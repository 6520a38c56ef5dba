// Dump: freeze the tree, collect every kind of state, write the image, then kill or
// thaw the job. The order keeps the job safe: injected syscalls (which change thread
// registers for a moment) all happen early and are undone before the long page copy,
// so a dumper killed part-way leaves threads with their own registers.
#include <fcntl.h>
#include <signal.h>
#include <sys/random.h>
#include <sys/utsname.h>

#include <chrono>
#include <future>
#include <optional>
#include <filesystem>
#include <set>

#include "ckpt/creds.h"
#include "ckpt/deleted.h"
#include "ckpt/dump_context.h"
#include "ckpt/engine.h"
#include "ckpt/files.h"
#include "ckpt/fsaccess.h"
#include "ckpt/imagekey.h"
#include "ckpt/inet.h"
#include "ckpt/madvise.h"
#include "ckpt/mem_tracking.h"
#include "ckpt/precopy.h"
#include "ckpt/locks.h"
#include "ckpt/memory.h"
#include "ckpt/namespaces.h"
#include "ckpt/page_hashes.h"
#include "ckpt/pipes.h"
#include "ckpt/mempolicy.h"
#include "ckpt/placement.h"
#include "ckpt/proc.h"
#include "ckpt/procattr.h"
#include "ckpt/pstree.h"
#include "ckpt/sections.h"
#include "ckpt/shmem.h"
#include "ckpt/signals.h"
#include "ckpt/sockets.h"
#include "ckpt/sysvshm.h"
#include "ckpt/threads.h"
#include "ckpt/timers.h"
#include "ckpt/posix_timers.h"
#include "ckpt/tty.h"
#include "ckpt/written_pages.h"
#include "common/error.h"
#include "common/fd.h"
#include "common/meminfo.h"

namespace fsched::ckpt {
namespace {

double ms_since(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t).count();
}

std::uint64_t dir_bytes(const std::filesystem::path& dir) {
  std::uint64_t n = 0;
  for (auto& e : std::filesystem::directory_iterator(dir))
    if (e.is_regular_file()) n += e.file_size();
  return n;
}

}  // namespace

std::uint64_t cpu_xfeatures() {
  std::uint32_t lo, hi;
  asm volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (std::uint64_t{hi} << 32) | lo;
}

// 32 hex digits from getrandom(2).
std::string random_id() {
  unsigned char b[16];
  if (::getrandom(b, sizeof b, 0) != static_cast<ssize_t>(sizeof b)) fail_errno("getrandom");
  return to_hex(b, sizeof b);
}

// Freezes the tree of `pid`. A tree caught mid-vfork cannot be frozen: thaw and try
// again a little later (t_freeze: when the successful attempt started).
std::unique_ptr<FrozenTree> freeze_job(pid_t pid, std::chrono::steady_clock::time_point& t_freeze) {
  for (int attempt = 1;; ++attempt) {
    try {
      return std::make_unique<FrozenTree>(pid);
    } catch (const FreezeBusy& e) {
      if (attempt == 5) throw Error(fmt::format("cannot freeze the job: {}", e.what()));
      ::usleep(100000 * attempt);
      t_freeze = std::chrono::steady_clock::now();
    }
  }
}

namespace {

// The signed image writer of a dump or pre-dump into o.dir. An existing directory or
// an unwritable location fails here, before the job is touched.
std::unique_ptr<ImageWriter> create_image(const DumpOptions& o) {
  std::error_code ec;
  if (std::filesystem::exists(o.dir, ec))
    fail_usage("image directory {} already exists", o.dir.string());
  auto img = ImageWriter::create(o.dir, o.compress_level, o.direct_io);
  img->sign_with(load_or_create_image_key(image_key_path(o.key_file)));
  return img;
}

// DumpStats::phases_ms: each phase timed from the end of the one before, the first from
// `start` (when the job was frozen).
class PhaseLog {
 public:
  PhaseLog(DumpStats& st, std::chrono::steady_clock::time_point start) : st_(st), lap_(start) {}
  void operator()(const char* name) {
    auto now = std::chrono::steady_clock::now();
    st_.phases_ms.emplace_back(name, std::chrono::duration<double, std::milli>(now - lap_).count());
    lap_ = now;
  }

 private:
  DumpStats& st_;
  std::chrono::steady_clock::time_point lap_;
};

// The tracking method of a dump that tracks (DumpOptions::track_method).
TrackMethod track_method_of(const DumpOptions& o) {
  const bool kernel = written_tracking_available();
  TrackMethod t = o.track_method.value_or(kernel ? TrackMethod::kKernel : TrackMethod::kHash);
  if (t == TrackMethod::kNone)
    fail_usage("--track-method: \"none\" is not a way of tracking (kernel or hash)");
  if (t == TrackMethod::kKernel && !kernel)
    fail_usage(
        "--track-method kernel: this kernel lacks userfaultfd's asynchronous write-protect "
        "(UFFD_FEATURE_WP_ASYNC, Linux 6.7) or PAGEMAP_SCAN; use --track-method hash");
  return t;
}

// Writes the "page_hashes" section: the hashes gathered in section order, then the
// SysV segments' (page_hashes.h: after the mappings', so that the section of an image
// without them reads as before).
void write_page_hashes(ImageWriter& img, const PageHashing& h) {
  img.append_pages(std::as_bytes(std::span(h.out)));
  img.append_pages(std::as_bytes(std::span(h.tail)));
}

// "NNN kB" (/proc/PID/status) in bytes; 0 if malformed.
std::uint64_t kb_field(const std::string& v) {
  auto n = parse_ints(v);
  return n.empty() || n[0] < 0 ? 0 : static_cast<std::uint64_t>(n[0]) * 1024;
}

// Most processes the hold budgets look at: a bigger job gets no more than their memory
// held.
constexpr std::size_t kHoldScanProcesses = 4096;
// Largest job memory a dump holds (ImageWriter::hold). Holding costs the buffers' pages
// before the freeze and as many page-cache pages after it: on our VMs, where fresh
// guest memory comes from the host at ~1-2 s per GiB, a 2 GiB job's full dump went
// from 1.9 to 6 s while its freeze went from 670 to 470-600 ms; the ~200 MiB python3
// job's freeze halved (174 to 80 ms) for ~80 ms more dump time.
constexpr std::uint64_t kMaxHoldBytes = 1ull << 30;

// Calls visit(pid) for each process of the running tree of `root` (children from
// /proc/PID/task/*/children), root first, at most kHoldScanProcesses of them, until
// visit returns false: the hold budgets' estimates, before the freeze. A process gone
// meanwhile (visit or listing its children throwing Error) is passed over, and its
// children with it.
template <typename Visit>
void for_each_job_process(pid_t root, Visit&& visit) {
  std::vector<pid_t> todo{root};
  for (std::size_t seen = 0; !todo.empty() && seen < kHoldScanProcesses; ++seen) {
    const pid_t pid = todo.back();
    todo.pop_back();
    try {
      if (!visit(pid)) return;
      for (pid_t c : list_children(pid)) todo.push_back(c);
    } catch (const Error&) {
      // exited meanwhile: an estimate
    }
  }
}

// What a dump that thaws the job before its commit holds in memory (ImageWriter::hold):
// the job's resident memory as read before the freeze (RssAnon + RssShmem of each
// process of the tree of `root`, /proc/PID/status; shared pages once per process that
// maps them), plus two chunks for the other sections, within an eighth of the memory
// available (/proc/meminfo MemAvailable); 0 (nothing held) for a job over
// kMaxHoldBytes, or when nothing can be read. When a job grew past the estimate, the
// chunks held are released and the rest is compressed under the freeze, as without
// hold.
std::uint64_t hold_budget(pid_t root) {
  std::uint64_t job = 0;
  for_each_job_process(root, [&](pid_t pid) {
    auto st = read_status(pid);
    job += kb_field(st["RssAnon"]) + kb_field(st["RssShmem"]);
    return true;
  });
  if (job > kMaxHoldBytes) return 0;
  return std::min(job + 2 * kChunkRawBytes, meminfo_kib("MemAvailable:") * 1024 / 8);
}

// The same for an incremental dump with the kernel's tracking: the bytes of the pages
// written since the parent (counted by the pre-copy round, precopy.h, or just before
// the freeze without it), `more_per_4` quarters more for what the job writes until it
// is frozen (the round takes a while: as much again; else a quarter), and two chunks
// for the rest (shared memory's changed pages, the other sections). Without it the incremental's
// pages are compressed and written into new page-cache pages under the freeze: 300-390 ms of a 101
// MiB incremental's freeze on a VM where fresh memory is slow, ~60 ms where it is not.
std::uint64_t hold_budget_for_written(std::uint64_t written, std::uint64_t more_per_4) {
  const std::uint64_t want = written + written * more_per_4 / 4 + 2 * kChunkRawBytes;
  if (want > kMaxHoldBytes) return 0;
  return std::min(want, meminfo_kib("MemAvailable:") * 1024 / 8);
}

// Without the pre-copy round (DumpOptions::pre_copy off): the pages of the private
// writable mappings written since the last reset, counted before the freeze
// (PAGEMAP_SCAN of /proc/PID/pagemap without reset), for the hold. 0 when a scan fails
// (a process that exited is passed over).
std::uint64_t incremental_hold_budget(pid_t root) {
  std::uint64_t written = 0;
  bool unknown = false;  // a scan failed: no estimate, nothing held
  for_each_job_process(root, [&](pid_t pid) {
    UniqueFd pm(::open(fmt::format("/proc/{}/pagemap", pid).c_str(), O_RDONLY | O_CLOEXEC));
    if (!pm) fail_errno("cannot open /proc/{}/pagemap", pid);  // exited meanwhile
    for (const MapsEntry& v : read_maps(pid)) {
      if (v.perms.size() < 4 || v.perms[1] != 'w' || v.perms[3] != 'p') continue;
      std::vector<PageStates> states;
      try {
        states = scan_pages(pm.get(), v.start, v.end, false, fmt::format("process {}", pid));
      } catch (const Error&) {
        unknown = true;
        return false;
      }
      for (const PageStates& r : states)
        if (r.written && r.present) written += r.end - r.start;
    }
    return written <= kMaxHoldBytes;
  });
  if (unknown || written > kMaxHoldBytes) return 0;
  return hold_budget_for_written(written, 1);
}

// The pre-copy round (precopy.h) of an incremental dump left running on `parent_id`,
// copying at most what a hold of the written pages may take. Errors after the job's
// tracking was claimed go to `failed` (the dump is then full).
std::optional<PreCopy> pre_copy(pid_t root, const std::string& parent_id, std::string& failed) {
  std::vector<pid_t> pids;
  for_each_job_process(root, [&](pid_t pid) {
    pids.push_back(pid);
    return true;
  });
  const std::uint64_t max_bytes = std::min(kMaxHoldBytes, meminfo_kib("MemAvailable:") * 1024 / 8);
  try {
    return PreCopy::run(root, pids, parent_id, max_bytes);
  } catch (const std::exception& e) {  // Error, or std::bad_alloc for the copies
    failed = e.what();
    return std::nullopt;
  }
}

}  // namespace

DumpStats pre_dump(const DumpOptions& o) {
  check_job_root(o.pid);
  const TrackMethod method = track_method_of(o);
  auto t0 = std::chrono::steady_clock::now();
  auto img = create_image(o);
  img->set_eager_writeback(false);
  DumpStats st;
  auto t_freeze = std::chrono::steady_clock::now();
  std::unique_ptr<FrozenTree> frozen = freeze_job(o.pid, t_freeze);
  PhaseLog phase(st, t_freeze);
  auto& procs = frozen->processes();
  Manifest m;
  m.image_id = random_id();
  m.kind = "pre-dump";
  m.dump_time_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();
  for (auto& p : procs) dump_ids(p);
  check_namespaces(o.pid, procs);
  JobTracking tracking = JobTracking::attach(procs);
  for (auto& p : procs)
    if (!p.zombie) dump_memory_layout(p);
  // With hashes nothing is tracked: the next dump compares what the pages hold.
  // Shared memory is hashed either way (page_hashes.h); its objects, the deleted files
  // and the SysV segments are opened now, while their mappings and fds surely exist,
  // and read once the job runs again, so that the dump on this pre-dump stores only
  // their pages written since.
  // Opened before the reset: a job the dump would refuse (SysV semaphores ...) fails
  // here without touching its tracking.
  PageHashing hashing;
  const bool hash_vmas = method == TrackMethod::kHash;
  std::vector<ShmSource> shm = open_shm(procs);
  std::set<std::string> shm_keys;
  for (const ShmSource& s : shm) shm_keys.insert(s.object.key);
  std::vector<DeletedSource> deleted = open_deleted_files(procs, shm_keys, true);
  SysvSources sysv = open_sysv_shm(procs);
  if (!hash_vmas) {
    tracking.prepare(procs);
    tracking.reset_all();
  }
  phase("track");
  frozen->thaw();
  st.freeze_ms = ms_since(t_freeze);
  phase("thaw");
  st.processes = static_cast<int>(procs.size());
  for (Section s : kSectionOrder) {
    img->begin_section(s);
    if (s == Section::kShm) dump_shm_data(shm, m, *img, &hashing);
    if (s == Section::kDeletedFiles) dump_deleted_files_data(deleted, m, *img, &hashing);
    if (s == Section::kSysvShm) dump_sysv_shm_data(sysv, m, *img, &hashing);
    if (s == Section::kPages)
      for (auto& p : procs)
        if (!p.zombie)
          st.memory_bytes += dump_pages_running(p, *img, hash_vmas ? &hashing : nullptr);
    if (s == Section::kPageHashes) write_page_hashes(*img, hashing);
  }
  phase("pages");
  for (auto& p : procs) m.processes.push_back(std::move(p.rec));
  img->commit(nlohmann::json(m));
  if (!hash_vmas) tracking.commit(m.image_id);
  phase("commit");
  st.dump_ms = ms_since(t0);
  st.image_bytes = dir_bytes(o.dir);
  return st;
}

DumpStats dump(const DumpOptions& o) {
  check_job_root(o.pid);
  if (o.track_mem && !o.leave_running)
    fail_usage("--track-mem needs --leave-running (a killed job is not tracked)");
  auto t0 = std::chrono::steady_clock::now();
  // The writer first: an unwritable location fails before the job is touched.
  auto img = create_image(o);
  // A job to be killed stays frozen until its image is durable: overlap the disk
  // writes with the dump. One to be thawed first must not wait for the disk.
  img->set_eager_writeback(!o.leave_running);

  const bool tracked = o.track_mem || !o.parent.empty();
  const TrackMethod method = tracked ? track_method_of(o) : TrackMethod::kNone;
  // The parent, checked (signature, format) before the job is touched; with hashes,
  // its hashes read now too.
  std::string parent_id;
  ParentHashes parent_hashes;
  std::string hashes_unreadable;  // why the parent's hashes could not be read
  if (!o.parent.empty()) {
    auto parent = ImageReader::open(o.parent, load_image_key(image_key_path(o.key_file)));
    parent_id = parent->manifest().value("image_id", std::string());
    if (parent_id.empty())
      fail_usage("parent image {} has no image id (made by an older engine)", o.parent.string());
    {
      // Hashes that cannot be read make a full image (or whole shared memory), not a
      // failed dump: the job's next checkpoint must not depend on a damaged parent.
      try {
        parent_hashes = ParentHashes::load(*parent, parent->manifest().get<Manifest>());
      } catch (const Error& e) {
        hashes_unreadable = e.what();
      }
    }
  }
  // Shared memory (shm objects, deleted files, SysV segments) is hashed by every dump
  // that tracks (the kernel's bits cannot see it); the private mappings only with
  // --track-method hash.
  std::optional<PageHashing> hashing;
  if (tracked) hashing.emplace();
  const bool hash_vmas = method == TrackMethod::kHash;
  DumpStats st;
  // A dump of a job thawed before the commit: its memory is only copied while it is
  // frozen, and compressed and written after the thaw. A full dump holds the job's
  // size, an incremental one the pages the kernel says were written; one comparing
  // hashes holds nothing (which pages it stores is known only under the freeze).
  if (o.leave_running && o.parent.empty()) img->hold(hold_budget(o.pid));
  // An incremental left running first copies, while the job runs, what was written
  // since the parent; the freeze then reads only what was written after that.
  std::optional<PreCopy> pre;
  std::string pre_copy_failed;
  if (o.leave_running && !o.parent.empty() && method == TrackMethod::kKernel) {
    const auto t_pre = std::chrono::steady_clock::now();
    if (o.pre_copy) pre = pre_copy(o.pid, parent_id, pre_copy_failed);
    if (pre) {
      st.pre_copy_ms = ms_since(t_pre);
      st.pre_copied_bytes = pre->copied_bytes();
    }
    // Without the round: the job's tracking does not go back to the parent (the dump
    // is full, and holds as one), the round failed (full if it had claimed it), or
    // it was turned off (the written pages are counted for the hold).
    img->hold(pre          ? hold_budget_for_written(pre->found_bytes(), 4)
              : o.pre_copy ? hold_budget(o.pid)
                           : incremental_hold_budget(o.pid));
  }
  auto t_freeze = std::chrono::steady_clock::now();
  std::unique_ptr<FrozenTree> frozen = freeze_job(o.pid, t_freeze);
  PhaseLog phase(st, t_freeze);
  FrozenTree& tree = *frozen;
  phase("seize");
  // The job's locks cannot change while it is frozen: /proc/locks is read meanwhile.
  std::future<std::string> proc_locks =
      std::async(std::launch::async, [] { return read_file("/proc/locks"); });
  auto& procs = tree.processes();
  // numa_maps walks every page table (as smaps does, read meanwhile here): on a second
  // core, that walk costs the frozen job nothing.
  std::vector<pid_t> live_pids;
  for (auto& p : procs) live_pids.push_back(p.zombie ? 0 : p.host_pid);
  std::future<std::vector<std::string>> numa_maps = std::async(std::launch::async, [live_pids] {
    std::vector<std::string> out;
    for (pid_t pid : live_pids) out.push_back(pid ? read_numa_maps(pid) : std::string());
    return out;
  });
  Manifest m;
  m.image_id = random_id();
  utsname u{};
  ::uname(&u);
  m.kernel = u.release;
  m.xfeatures = cpu_xfeatures();
  m.xstate_size = read_xstate(procs.at(0).host_tids.at(0)).size();
  m.boot_id = boot_id();
  m.dump_time_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                       std::chrono::system_clock::now().time_since_epoch())
                       .count();

  for (auto& p : procs) dump_ids(p);
  check_namespaces(o.pid, procs);
  // Tracking: attached before the layout is read (a VMA it registered shows "uw").
  // Every dump attaches: a job tracked by an earlier dump has mappings registered by
  // us ("uw"), which even a dump that does not track must accept.
  JobTracking tracking = JobTracking::attach(procs);
  // A job left running after an incremental dump stays tracked for the next one (as
  // the issue asks of --parent with --leave-running), --track-mem or not.
  const bool keep_tracking = o.leave_running && tracked && method == TrackMethod::kKernel;
  for (auto& p : procs) {
    if (p.zombie) continue;
    dump_memory_layout(p);
    st.threads += static_cast<int>(p.host_tids.size());
  }
  st.processes = static_cast<int>(procs.size());
  const std::vector<std::string> numa = numa_maps.get();
  phase("layout");
  std::optional<TermSignalsBlocked> blocked(std::in_place);
  try {
    for (std::size_t i = 0; i < procs.size(); ++i) {
      auto& p = procs[i];
      if (p.zombie) continue;
      open_injection(p);
      dump_memory_injected(p);
      dump_vma_mempolicies(p, numa[i]);
      dump_threads(p, m.xstate_size);
      dump_signals(p);
      dump_creds(p);
      dump_mm_locks(p);
      dump_process_ctl(p);
      dump_placement(p, procs.front());
      dump_timers(p);
      dump_posix_timers(p);
      close_injection(p);
    }
  } catch (...) {
    for (auto& p : procs) {
      try {
        close_injection(p);
      } catch (...) {
      }
    }
    throw;
  }
  blocked.reset();
  phase("process");
  for (auto& p : procs)
    if (!p.zombie) dump_files(p, procs);
  dump_ttys(procs);  // both ends of each pty, controlling terminals (tty.h)
  check_unattributed_locks(procs, proc_locks.get());
  // TCP connections go into repair mode here (inet.h), out of it again if the dump
  // fails or the job runs on.
  InetRepair inet_repair(o.tcp_hold_s);
  dump_inet(procs, m, inet_repair);
  st.tcp_freeze = inet_repair.freeze_note();
  phase("state");
  // Incremental when the job's written bits go back to the parent's dump, or with
  // hashes when the parent has hashes to compare with.
  if (!o.parent.empty() && hash_vmas) {
    st.incremental = parent_hashes.any_mappings();
    if (!st.incremental)
      st.full_because = !hashes_unreadable.empty()
                            ? "the parent image's page hashes cannot be read: " + hashes_unreadable
                            : "the parent image holds no page hashes (it was not dumped with "
                              "--track-method hash)";
  } else if (!o.parent.empty()) {
    st.incremental = tracking.epoch() == (pre ? pre->epoch() : parent_id);
    if (!st.incremental)
      st.full_because =
          !pre_copy_failed.empty() ? "the pre-copy round failed: " + pre_copy_failed
          : pre                    ? "another dump of the job ran during this one's pre-copy round"
          : tracking.epoch().empty() ? "the job's written pages are not tracked (no dump with "
                                       "--track-mem since it started or was restored)"
          : tracking.epoch() == "resetting" || tracking.epoch().starts_with("pre-copy ")
              ? "a dump failed or was killed since the parent"
              : "the job's tracking goes back to another image than the parent";
  }
  if (tracked && !hash_vmas) tracking.prepare(procs);
  if (st.incremental) st.track = method;
  if (st.incremental) hashing->parent = &parent_hashes;
  if (st.incremental) {
    m.kind = "incremental";
    m.parent.image_id = parent_id;
    m.parent.dir = o.parent.parent_path() == o.dir.parent_path()
                       ? o.parent.filename().string()
                       : std::filesystem::absolute(o.parent).string();
  }
  // The page stream, section by section in the one order restore reads it back in
  // (sections.h); the writer records where each starts.
  for (Section s : kSectionOrder) {
    img->begin_section(s);
    switch (s) {
      case Section::kShm:
        dump_shm(procs, m, *img, hashing ? &*hashing : nullptr);
        break;
      case Section::kDeletedFiles:
        dump_deleted_files(procs, m, *img, hashing ? &*hashing : nullptr);
        break;
      case Section::kSysvShm:
        dump_sysv_shm(procs, m, *img, hashing ? &*hashing : nullptr);
        break;
      case Section::kPages:
        for (auto& p : procs)
          if (!p.zombie)
            st.memory_bytes +=
                dump_pages(p, *img, tracked && !hash_vmas ? &tracking : nullptr, st.incremental,
                           hash_vmas ? &*hashing : nullptr, pre ? &*pre : nullptr);
        break;
      case Section::kPipes:
        dump_pipes(procs, m, *img);
        break;
      case Section::kSockets:
        dump_sockets(procs, m, *img);
        break;
      case Section::kPageHashes:
        if (hashing) write_page_hashes(*img, *hashing);
        break;
    }
  }
  phase("pages");
  for (auto& p : procs) m.processes.push_back(std::move(p.rec));

  nlohmann::json j = m;
  if (o.leave_running) {
    inet_repair.end_repair();
    tree.thaw();
    st.freeze_ms = ms_since(t_freeze);
    phase("thaw");
    st.held_bytes = img->held_bytes();
    img->commit(std::move(j));
    // Only now does the tracking belong to this image.
    if (keep_tracking) tracking.commit(m.image_id);
    phase("commit");
  } else {
    // The job dies only once its image is durable, and with its TCP connections as
    // they were dumped (locked against incoming packets: netlock.h).
    inet_repair.check_unchanged();
    img->commit(std::move(j));
    phase("commit");
    inet_repair.keep_for_kill();  // repair mode for the close, at the last moment
    tree.kill([&] { st.freeze_ms = ms_since(t_freeze); });
    inet_repair.job_killed();
    phase("kill");
  }
  st.dump_ms = ms_since(t0);
  st.image_bytes = dir_bytes(o.dir);
  return st;
}

}  // namespace fsched::ckpt
