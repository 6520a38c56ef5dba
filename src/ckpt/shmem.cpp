// Shared memory: objects mapped MAP_SHARED that live only in memory — shared
// anonymous mappings (shown as "/dev/zero (deleted)"), memfds, and files in /dev/shm
// (POSIX shm_open(3) and sem_open(3) objects, often unlinked while mapped). Each is
// stored once, read through /proc/PID/map_files (proc(5)), skipping holes with
// SEEK_DATA/SEEK_HOLE (lseek(2)). On restore each is recreated in init — a memfd, or
// the named /dev/shm file — filled by the restorer, and mapped by every process that
// had it, so they share it again.
#include "ckpt/shmem.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "ckpt/fsaccess.h"
#include "ckpt/memfd.h"
#include "ckpt/page_hashes.h"
#include "ckpt/parent_chain.h"
#include "ckpt/remote.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::size_t kIo = 4u << 20;

std::string named_path(const std::string& maps_path) {
  if (maps_path.rfind("/dev/shm/", 0) == 0 && !maps_path.ends_with(" (deleted)")) return maps_path;
  return "";
}

}  // namespace

bool is_shm_path(const std::string& p) {
  return p.rfind("/dev/zero", 0) == 0 || p.rfind("/memfd:", 0) == 0 || p.rfind("/dev/shm/", 0) == 0;
}

namespace {

// Reads the data of the first `size` bytes of file `fd` into `buf` piece by piece, in
// whole pages (a multiple of the page size, at most buf.size()), skipping holes
// (SEEK_DATA/SEEK_HOLE), and hands each piece to fn(offset, bytes).
template <typename Fn>
void for_each_data_piece(int fd, std::uint64_t size, std::vector<std::byte>& buf,
                         const std::string& what, Fn&& fn) {
  off_t pos = 0;
  const off_t end = static_cast<off_t>(size);
  const off_t page = static_cast<off_t>(kPage);
  while (pos < end) {
    off_t data = ::lseek(fd, pos, SEEK_DATA);
    if (data < 0) break;  // ENXIO: only a hole is left
    off_t hole = ::lseek(fd, data, SEEK_HOLE);
    if (hole < 0) hole = end;
    data = data / page * page;
    hole = std::min<off_t>(end, (hole + page - 1) / page * page);
    for (off_t at = data; at < hole;) {
      std::size_t n =
          static_cast<std::size_t>(std::min<off_t>(hole - at, static_cast<off_t>(buf.size())));
      n = (n + kPage - 1) / kPage * kPage;
      std::fill(buf.begin(), buf.begin() + static_cast<std::ptrdiff_t>(n), std::byte{0});
      if (::pread(fd, buf.data(), n, at) < 0) fail_errno("reading {} at {}", what, at);
      fn(static_cast<std::uint64_t>(at), n);
      at += static_cast<off_t>(n);
    }
    pos = hole;
  }
}

}  // namespace

std::vector<std::pair<std::uint64_t, std::uint64_t>> append_file_data(int fd, std::uint64_t size,
                                                                      ImageWriter& img,
                                                                      std::vector<std::byte>& buf,
                                                                      const std::string& what) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> runs;
  for_each_data_piece(fd, size, buf, what, [&](std::uint64_t at, std::size_t n) {
    img.append_pages(std::span(buf.data(), n));
    std::uint64_t first = at / kPage, cnt = n / kPage;
    if (!runs.empty() && runs.back().first + runs.back().second == first)
      runs.back().second += cnt;
    else
      runs.emplace_back(first, cnt);
  });
  return runs;
}

namespace {

// Adds page `at` to runs (ascending), joining it to the last run when adjacent.
template <typename Runs>
void add_page(Runs& runs, std::uint64_t at) {
  if (!runs.empty() && runs.back().first + runs.back().second == at)
    ++runs.back().second;
  else
    runs.emplace_back(at, 1);
}

}  // namespace

void append_file_data_hashed(int fd, const std::string& key, std::uint64_t size,
                             std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs,
                             PageRuns& parent_runs, ImageWriter& img, std::vector<std::byte>& buf,
                             PageHashing& hashing, const std::string& what) {
  ParentHashes::Cursor parent;
  if (hashing.parent) parent = hashing.parent->object_cursor(key);
  for_each_data_piece(fd, size, buf, what, [&](std::uint64_t at, std::size_t n) {
    std::size_t kept = 0;
    for (std::size_t i = 0; i < n / kPage; ++i) {
      const std::byte* pg = buf.data() + i * kPage;
      const std::uint64_t index = at / kPage + i;
      const PageHash h = hash_page(pg);
      hashing.out.push_back(h);
      const PageHash* was = parent.find(index);
      if (was && *was == h) {
        add_page(parent_runs, index);
        continue;
      }
      if (kept != i) std::memmove(buf.data() + kept * kPage, pg, kPage);
      ++kept;
      add_page(runs, index);
    }
    img.append_pages(std::span(buf.data(), kept * kPage));
  });
}

void fill_file_data(int fd, std::uint64_t size,
                    const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs,
                    PageReader& pages, std::vector<std::byte>& buf, const std::string& what) {
  for (auto [first, count] : runs) {
    std::uint64_t off = first * kPage, left = count * kPage;
    if (off + left > (size + kPage - 1) / kPage * kPage)
      fail_image("image: {}: data beyond its size", what);
    while (left) {
      std::size_t n = static_cast<std::size_t>(std::min<std::uint64_t>(left, buf.size()));
      pages.read(std::span(buf.data(), n));
      // The last page may reach past the object's size: write only what fits.
      std::size_t keep = static_cast<std::size_t>(std::min<std::uint64_t>(n, size - off));
      if (::pwrite(fd, buf.data(), keep, static_cast<off_t>(off)) != static_cast<ssize_t>(keep))
        fail_errno("{}: writing its data", what);
      off += n;
      left -= n;
    }
  }
}

void seal_shm_objects(InitStash& stash, const Manifest& m, const ShmTable& table) {
  auto seal = [&](const std::string& key, int seals, const std::string& what) {
    if (seals < 0) return;
    UniqueFd w = stash.take(shm_fd_in_init(table, key), what);
    seal_after_mapping(w.get(), seals, what);
  };
  for (auto& o : m.shm)
    seal(o.key, o.seals, fmt::format("shared memory object {}", o.path.empty() ? o.key : o.path));
  for (auto& d : m.deleted_files) seal(d.key, d.seals, fmt::format("deleted file {}", d.path));
}

int shm_fd_in_init(const ShmTable& t, const std::string& key) {
  auto it = t.find(key);
  if (it == t.end()) fail_image("image: shared memory object {} is not in the image", key);
  return it->second;
}

std::vector<ShmSource> open_shm(std::span<DumpProcess> procs) {
  std::vector<ShmSource> out;
  for (auto& p : procs) {
    // The maps path of each shm VMA, to tell named objects from unlinked ones.
    for (auto& v : p.rec.vmas) {
      if (v.kind != VmaKind::kShm) continue;
      bool seen = false;
      for (auto& s : out) seen = seen || s.object.key == v.shm_key;
      if (seen) continue;
      std::string mf = fmt::format("/proc/{}/map_files/{:x}-{:x}", p.host_pid, v.start, v.end);
      UniqueFd fd(::open(mf.c_str(), O_RDONLY | O_CLOEXEC));
      if (!fd) fail_errno("process {}: cannot open shared memory {} ({})", p.rec.pid, mf, v.path);
      struct stat st {};
      if (::fstat(fd.get(), &st) < 0) fail_errno("fstat {}", mf);
      ShmObject o;
      o.key = v.shm_key;
      o.path = named_path(v.path);
      o.mode = st.st_mode & 07777;
      o.uid = st.st_uid;
      o.gid = st.st_gid;
      o.size = static_cast<std::uint64_t>(st.st_size);
      o.seals = dump_seals(fd.get(),
                           fmt::format("process {}: shared memory {} ({})", p.rec.pid, mf, v.path));
      out.push_back({std::move(o), std::move(fd), mf});
    }
  }
  return out;
}

void dump_shm_data(std::vector<ShmSource>& sources, Manifest& m, ImageWriter& img,
                   PageHashing* hashing) {
  std::vector<std::byte> buf(kIo);
  for (ShmSource& s : sources) {
    append_object_data(s.object, s.fd.get(), img, buf, hashing, s.what);
    m.shm.push_back(std::move(s.object));
  }
}

void dump_shm(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img, PageHashing* hashing) {
  std::vector<ShmSource> sources = open_shm(procs);
  dump_shm_data(sources, m, img, hashing);
}

ShmTable create_shm(InitStash& stash, const InjectionArea& area, const Manifest& m,
                    PageReader& pages, ParentChain* chain) {
  ShmTable table;
  if (m.shm.empty()) return table;
  Injector& inj = stash.inj();
  RestoreProcess& init = stash.init();
  std::vector<std::byte> buf(kIo);
  for (auto& o : m.shm) {
    std::string what = fmt::format("shared memory object {}", o.path.empty() ? o.key : o.path);
    long fd;
    if (o.path.empty()) {
      // A memfd keeps its name (the job sees it in /proc/self/fd and maps); shared
      // anonymous memory has none the job can see.
      std::string name = "fsched-shm";
      for (auto& p : m.processes)
        for (auto& v : p.vmas)
          if (v.kind == VmaKind::kShm && v.shm_key == o.key && is_memfd_path(v.path))
            name = memfd_name(v.path);
      fd = create_memfd(inj, init.host_pid, area, name, what);
    } else {
      // The named object again, so the job's writes reach /dev/shm/NAME as before:
      // opened or made by init as the object's owner in the job, never through a link,
      // and refused unless it is a regular file of the dumped owner (fsaccess.h).
      act_as(inj, init.host_pid, area,
             &owner_of(
                 m, [&](const Fd& f) { return f.deleted_key == o.key; },
                 [&](const Vma& v) { return v.kind == VmaKind::kShm && v.shm_key == o.key; }),
             what);
      fd =
          open_no_symlinks(inj, init.host_pid, area, o.path, O_RDWR | O_CREAT, o.mode & 0777, what);
      set_owner_and_mode(inj, init.host_pid, fd, o.uid, o.gid, o.mode, what);
      check_identity(init.host_pid, fd,
                     FileId{.mode = S_IFREG | o.mode, .uid = o.uid, .gid = o.gid}, SizeRule::kAny,
                     m.boot_id, what);
      act_as(inj, init.host_pid, area, nullptr, what);
    }
    inj.call_ok(what + ": ftruncate", SYS_ftruncate, static_cast<std::uint64_t>(fd), o.size);
    int high = stash.park(fd, what);
    table[o.key] = high;
    UniqueFd w = stash.take(high, what);
    if (o.path.empty()) {
      // The owner and mode the job saw (the mode after the owner: fchown clears
      // set-user-ID bits); the restorer made it as root.
      if (::fchown(w.get(), o.uid, o.gid) < 0)
        fail_errno("{}: fchown to {}:{}", what, o.uid, o.gid);
      if (::fchmod(w.get(), o.mode) < 0) fail_errno("{}: fchmod {:o}", what, o.mode);
    }
    fill_file_data(w.get(), o.size, o.runs, pages, buf, what);
    if (!o.parent_runs.empty()) {
      if (!chain) fail_image("image: {} has pages in a parent image but no parent", what);
      chain->fill_object(o.key, w.get(), o.size, o.parent_runs);
    }
    seal_before_mapping(w.get(), o.seals, what);
  }
  return table;
}

}  // namespace fsched::ckpt
