// SysV shared memory (shmget(2), shmat(2)). Jobs run in an IPC namespace of their own
// (run.cpp, and create_tree on restore), so that a segment's id, which programs keep
// and pass around as a plain number, can be given back on restore: the restorer
// writes the id to kernel.shm_next_id (proc(5), /proc/sys/kernel/shm_next_id) of the
// restored job's new namespace before shmget(2). The dumper enters the job's namespace
// in a thread of its own (setns(2)), lists every segment (SHM_STAT_ANY), attaches each
// read-only and stores the pages that exist (mincore(2)); a dump that tracks hashes
// each such page and takes those equal to the parent image's segment of the same id
// and size from the parent chain (the kernel's written bits are per process and see
// no other mapper's writes: as for shm objects, shmem.h); an attach in the job is a
// "sysv" VMA that the process shmat()s again at the same address. Segments removed
// (IPC_RMID) while still attached are removed again once every process has attached
// them. Not kept: creator ids (cuid, cgid: the restorer creates the segments), times,
// last pid, SHM_LOCK. SysV semaphores and message queues are refused.
#include "ckpt/sysvshm.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/msg.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <functional>
#include <map>
#include <set>
#include <thread>

#include "ckpt/page_hashes.h"
#include "ckpt/parent_chain.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::size_t kIo = 4u << 20;

// Runs fn in a new thread that has joined the IPC namespace of host process `pid`
// (setns(2) changes only the calling thread's), rethrowing what it throws.
void in_ipc_ns(pid_t pid, const std::function<void()>& fn) {
  std::string ns = fmt::format("/proc/{}/ns/ipc", pid);
  UniqueFd nsfd(::open(ns.c_str(), O_RDONLY | O_CLOEXEC));
  if (!nsfd) fail_errno("cannot open {}", ns);
  std::exception_ptr err;
  std::thread t([&] {
    try {
      if (::setns(nsfd.get(), CLONE_NEWIPC) < 0) fail_errno("setns to {}", ns);
      fn();
    } catch (...) {
      err = std::current_exception();
    }
  });
  t.join();
  if (err) std::rethrow_exception(err);
}

bool same_ns(pid_t pid) {
  struct stat a {
  }, b{};
  if (::stat(fmt::format("/proc/{}/ns/ipc", pid).c_str(), &a) < 0)
    fail_errno("process {}: cannot stat its IPC namespace", pid);
  if (::stat("/proc/self/ns/ipc", &b) < 0) fail_errno("cannot stat our IPC namespace");
  return a.st_ino == b.st_ino && a.st_dev == b.st_dev;
}

bool zero_page(const std::byte* p) {
  for (std::size_t i = 0; i < kPage; ++i)
    if (p[i] != std::byte{0}) return false;
  return true;
}

// Every "sysv" VMA must be part of a whole attach: pieces in address order, the first
// at offset 0, each following on, the last ending at the segment's end; what shmat(2)
// gives back. An attach partly unmapped by the program is not.
void check_attaches(const DumpProcess& p, const std::map<int, std::uint64_t>& sizes) {
  const Vma* prev = nullptr;
  std::uint64_t want_end = 0;  // pages of the current attach still to come
  for (auto& v : p.rec.vmas) {
    if (v.kind != VmaKind::kSysv) {
      if (prev && want_end)
        fail_unsupported(
            "process {} (pid {} in the job): SysV segment {} at {:#x} is partly unmapped "
            "(unsupported)",
            p.host_pid, p.rec.pid, prev->shm_key, prev->start);
      prev = nullptr;
      continue;
    }
    int id = std::stoi(v.shm_key);
    auto it = sizes.find(id);
    if (it == sizes.end())
      fail_unsupported(
          "process {} (pid {} in the job): SysV segment {} mapped at {:#x} is not in the job's "
          "IPC namespace",
          p.host_pid, p.rec.pid, id, v.start);
    std::uint64_t len = v.end - v.start;
    bool continues = prev && want_end && prev->shm_key == v.shm_key && prev->end == v.start &&
                     v.pgoff == prev->pgoff + (prev->end - prev->start);
    if (!continues && (want_end || v.pgoff != 0))
      fail_unsupported(
          "process {} (pid {} in the job): SysV segment {} at {:#x} is partly unmapped "
          "(unsupported)",
          p.host_pid, p.rec.pid, id, v.start);
    std::uint64_t total = (it->second + kPage - 1) / kPage * kPage;
    want_end = total - (v.pgoff + len);
    prev = &v;
  }
  if (prev && want_end)
    fail_unsupported(
        "process {} (pid {} in the job): SysV segment {} at {:#x} is partly unmapped "
        "(unsupported)",
        p.host_pid, p.rec.pid, prev->shm_key, prev->start);
}

}  // namespace

SysvAttach::SysvAttach(int id, int flags, const std::string& what) {
  p_ = ::shmat(id, nullptr, flags);
  if (p_ == reinterpret_cast<void*>(-1)) fail_errno("{}: shmat", what);
}

SysvAttach::~SysvAttach() { ::shmdt(p_); }

SysvSources open_sysv_shm(std::span<DumpProcess> procs) {
  SysvSources out;
  pid_t init = procs[0].host_pid;
  const DumpProcess* attacher = nullptr;
  for (auto& p : procs)
    for (auto& v : p.rec.vmas)
      if (v.kind == VmaKind::kSysv && !attacher) attacher = &p;
  if (same_ns(init)) {
    if (attacher)
      fail_unsupported(
          "process {} (pid {} in the job): maps SysV shared memory, but the job shares the "
          "host's IPC namespace (not started by this version of fsched-ckpt run): its segment "
          "ids could not be kept",
          attacher->host_pid, attacher->rec.pid);
    return out;
  }
  std::map<int, std::uint64_t> sizes;
  in_ipc_ns(init, [&] {
    // Semaphores and message queues would be lost without a word.
    seminfo si{};
    if (::semctl(0, 0, SEM_INFO, &si) >= 0 && si.semusz > 0)
      fail_unsupported("the job has {} SysV semaphore set(s): not supported yet", si.semusz);
    msginfo mi{};
    if (::msgctl(0, MSG_INFO, reinterpret_cast<msqid_ds*>(&mi)) >= 0 && mi.msgpool > 0)
      fail_unsupported("the job has {} SysV message queue(s): not supported yet", mi.msgpool);
    shm_info info{};
    int max_idx = ::shmctl(0, SHM_INFO, reinterpret_cast<shmid_ds*>(&info));
    if (max_idx < 0) fail_errno("shmctl(SHM_INFO) in the job's IPC namespace");
    // Pages swapped out are not resident for mincore(2): then read every page.
    out.swapped = info.shm_swp > 0;
    for (int idx = 0; idx <= max_idx; ++idx) {
      shmid_ds ds{};
      int id = ::shmctl(idx, SHM_STAT_ANY, &ds);
      if (id < 0) continue;  // a free slot
      SysvShm s;
      s.id = id;
      s.key = ds.shm_perm.__key;
      s.size = ds.shm_segsz;
      s.mode = ds.shm_perm.mode & 0777;
      s.uid = ds.shm_perm.uid;
      s.gid = ds.shm_perm.gid;
      s.removed = (ds.shm_perm.mode & SHM_DEST) != 0;
      if (s.removed) s.key = IPC_PRIVATE;
      std::string what = fmt::format("SysV shared memory segment {} (key {:#x}, {} bytes)", id,
                                     static_cast<unsigned>(s.key), s.size);
      auto a = std::make_unique<SysvAttach>(id, SHM_RDONLY, what);
      sizes[id] = s.size;
      out.segments.push_back({std::move(s), std::move(a), std::move(what)});
    }
  });
  for (auto& p : procs)
    if (!p.zombie) check_attaches(p, sizes);
  return out;
}

namespace {

// Adds pages [first, first + count) to runs (ascending), joining the last run when
// adjacent.
template <typename Runs>
void add_pages(Runs& runs, std::uint64_t first, std::uint64_t count) {
  if (!runs.empty() && runs.back().first + runs.back().second == first)
    runs.back().second += count;
  else
    runs.emplace_back(first, count);
}

// The present, non-zero pages of one segment, stored whole.
void store_whole(const SysvSource& src, bool swapped, const std::vector<unsigned char>& resident,
                 SysvShm& s, ImageWriter& img) {
  const std::byte* base = src.attach->data();
  const std::uint64_t npages = resident.size();
  auto wanted = [&](std::uint64_t i) {
    return (swapped || (resident[i] & 1)) && !zero_page(base + i * kPage);
  };
  for (std::uint64_t i = 0; i < npages;) {
    if (!wanted(i)) {
      ++i;
      continue;
    }
    std::uint64_t j = i + 1;
    while (j < npages && j - i < kIo / kPage && wanted(j)) ++j;
    img.append_pages(std::span<const std::byte>(base + i * kPage, (j - i) * kPage));
    add_pages(s.runs, i, j - i);
    i = j;
  }
}

// The same with hashes: each piece copied first, so that what is hashed is what is
// stored even while the job writes the segment (a pre-dump); a page whose hash equals
// the parent's segment's at the same index goes to parent_runs.
void store_hashed(const SysvSource& src, bool swapped, const std::vector<unsigned char>& resident,
                  SysvShm& s, ImageWriter& img, PageHashing& hashing, std::vector<std::byte>& buf) {
  ParentHashes::Cursor parent;
  if (hashing.parent) parent = hashing.parent->object_cursor(sysv_object_key(s.id), s.size);
  const std::uint64_t npages = resident.size();
  for (std::uint64_t at = 0; at < npages;) {
    const std::uint64_t n = std::min<std::uint64_t>(npages - at, buf.size() / kPage);
    std::memcpy(buf.data(), src.attach->data() + at * kPage, n * kPage);
    std::size_t kept = 0;
    for (std::uint64_t i = 0; i < n; ++i) {
      const std::byte* pg = buf.data() + i * kPage;
      if (!(swapped || (resident[at + i] & 1)) || zero_page(pg)) continue;
      const PageHash h = hash_page(pg);
      hashing.tail.push_back(h);
      const PageHash* was = parent.find(at + i);
      if (was && *was == h) {
        add_pages(s.parent_runs, at + i, 1);
        continue;
      }
      if (kept != i) std::memmove(buf.data() + kept * kPage, pg, kPage);
      ++kept;
      add_pages(s.runs, at + i, 1);
    }
    img.append_pages(std::span<const std::byte>(buf.data(), kept * kPage));
    at += n;
  }
}

}  // namespace

void dump_sysv_shm_data(SysvSources& sources, Manifest& m, ImageWriter& img, PageHashing* hashing) {
  std::vector<std::byte> buf;
  if (hashing) buf.resize(kIo);
  for (SysvSource& src : sources.segments) {
    SysvShm& s = src.segment;
    const std::uint64_t npages = (s.size + kPage - 1) / kPage;
    std::vector<unsigned char> resident(npages);
    if (npages && ::mincore(src.attach->data(), npages * kPage, resident.data()) < 0)
      fail_errno("{}: mincore", src.what);
    if (hashing) {
      s.track = TrackMethod::kHash;
      store_hashed(src, sources.swapped, resident, s, img, *hashing, buf);
    } else {
      store_whole(src, sources.swapped, resident, s, img);
    }
    m.sysv_shm.push_back(std::move(s));
  }
}

void dump_sysv_shm(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img,
                   PageHashing* hashing) {
  SysvSources sources = open_sysv_shm(procs);
  dump_sysv_shm_data(sources, m, img, hashing);
}

void create_sysv_shm(const RestoreProcess& init, const Manifest& m, PageReader& pages,
                     ParentChain* chain) {
  if (m.sysv_shm.empty()) return;
  in_ipc_ns(init.host_pid, [&] {
    for (auto& s : m.sysv_shm) {
      std::string what = fmt::format("SysV shared memory segment {} (key {:#x})", s.id,
                                     static_cast<unsigned>(s.key));
      {
        // The next segment created in this namespace gets this id (a one-shot setting).
        UniqueFd next(::open("/proc/sys/kernel/shm_next_id", O_WRONLY | O_CLOEXEC));
        if (!next) fail_errno("{}: cannot open /proc/sys/kernel/shm_next_id", what);
        std::string v = std::to_string(s.id);
        if (::write(next.get(), v.data(), v.size()) != static_cast<ssize_t>(v.size()))
          fail_errno("{}: cannot set kernel.shm_next_id", what);
      }
      int id = ::shmget(s.key, s.size, IPC_CREAT | IPC_EXCL | static_cast<int>(s.mode & 0777));
      if (id < 0) fail_errno("{}: shmget", what);
      if (id != s.id) fail("{}: created with id {}: the id cannot be reproduced", what, id);
      shmid_ds ds{};
      if (::shmctl(id, IPC_STAT, &ds) < 0) fail_errno("{}: shmctl(IPC_STAT)", what);
      ds.shm_perm.uid = s.uid;
      ds.shm_perm.gid = s.gid;
      ds.shm_perm.mode = static_cast<unsigned short>(s.mode & 0777);
      if (::shmctl(id, IPC_SET, &ds) < 0) fail_errno("{}: shmctl(IPC_SET)", what);
      if (s.runs.empty() && s.parent_runs.empty()) continue;
      SysvAttach a(id, 0, what);
      const std::uint64_t npages = (s.size + kPage - 1) / kPage;
      for (auto [first, count] : s.runs) {
        if (first > npages || count > npages - first)
          fail_image("image: {}: data beyond its size", what);
        pages.read(std::span(a.data() + first * kPage, count * kPage));
      }
      // Before any process attaches it: the job never sees the segment half filled.
      if (!s.parent_runs.empty()) {
        if (!chain) fail_image("image: {} has pages in a parent image but no parent", what);
        chain->fill_memory(sysv_object_key(s.id), a.data(), npages * kPage, s.parent_runs);
      }
    }
  });
}

void finish_sysv_shm(const RestoreProcess& init, const Manifest& m) {
  bool any = false;
  for (auto& s : m.sysv_shm) any = any || s.removed;
  if (!any) return;
  in_ipc_ns(init.host_pid, [&] {
    for (auto& s : m.sysv_shm)
      if (s.removed && ::shmctl(s.id, IPC_RMID, nullptr) < 0)
        fail_errno("SysV shared memory segment {}: shmctl(IPC_RMID)", s.id);
  });
}

}  // namespace fsched::ckpt
