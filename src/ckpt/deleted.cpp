// Deleted files: regular files the job still holds open or mapped after they were
// unlinked (bash here-documents, tmpfile(3), Python's tempfile.TemporaryFile, programs
// that open and unlink their scratch files), and memfds held only as fds. No path
// leads to them any more, so their contents go into the image: read through
// /proc/PID/fd/N or /proc/PID/map_files (proc(5)), which open the inode itself,
// holes skipped as for shared memory. On restore each is created again as an unlinked
// file in the directory it was in (open(2) O_TMPFILE, or create + unlink where the
// file system lacks it) — so it takes space on the same file system as before — with
// its mode and owner, and parked in init like the shm objects; every fd reopens it
// through /proc/self/fd (a new open file description with that fd's own flags) and
// every mapping maps it.
#include "ckpt/deleted.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <random>

#include "ckpt/fsaccess.h"
#include "ckpt/mem_tracking.h"
#include "ckpt/memfd.h"
#include "ckpt/page_hashes.h"
#include "ckpt/parent_chain.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "ckpt/shmem.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

constexpr std::size_t kIo = 4u << 20;
constexpr const char* kMemfd = "/memfd:";

bool is_memfd(const std::string& path) { return path.rfind(kMemfd, 0) == 0; }

std::string parent_dir(const std::string& path) {
  auto dir = std::filesystem::path(path).parent_path().string();
  return dir.empty() ? "/" : dir;
}

// A new unlinked regular file in `dir`, open for reading and writing, made by the
// thread behind `inj` (init, acting as the file's owner in the job); returns its fd there.
long create_unlinked(Injector& inj, pid_t host_pid, const InjectionArea& area,
                     const std::string& dir, unsigned mode, const std::string& what) {
  try {
    return open_no_symlinks(inj, host_pid, area, dir, O_TMPFILE | O_RDWR, mode, what);
  } catch (const Error& e) {
    // Not every file system has O_TMPFILE (the kernel answers EOPNOTSUPP, or EISDIR
    // when it predates the flag): a name of our own, unlinked at once.
    if (e.err() != EOPNOTSUPP && e.err() != EISDIR && e.err() != EINVAL) throw;
  }
  std::random_device rd;
  for (int attempt = 0; attempt < 100; ++attempt) {
    std::string name = fmt::format("{}/.fsched-deleted-{:08x}", dir, rd());
    long fd;
    try {
      fd = open_no_symlinks(inj, host_pid, area, name, O_CREAT | O_EXCL | O_RDWR, mode, what);
    } catch (const Error& e) {
      if (e.err() == EEXIST) continue;
      throw;
    }
    std::uint64_t pa = put_string(host_pid, area, 0, name);
    long un = inj.call(SYS_unlinkat, static_cast<std::uint64_t>(AT_FDCWD), pa, 0);
    if (un < 0) {
      inj.call(SYS_close, static_cast<std::uint64_t>(fd));
      throw Error(fmt::format("{}: cannot unlink {}", what, name), static_cast<int>(-un));
    }
    return fd;
  }
  fail("{}: no free temporary name in {}", what, dir);
}

}  // namespace

std::string file_key(dev_t dev, ino_t ino) {
  // The form /proc/PID/maps gives a mapped file ("fd:01" and the inode), so that a
  // deleted file the job both maps and holds open is recognised as one file.
  return fmt::format("{:02x}:{:02x}:{}", major(dev), minor(dev), ino);
}

namespace {

// The fds of host process `hp` that hold a regular file unlinked while open (the link
// ends in " (deleted)" and no file has that name and inode): {fd, key, where it was}.
// For a pre-dump, which does not list fds otherwise; a file the dump would refuse
// (other hard links) is left to the dump to refuse.
std::vector<Fd> scan_deleted_fds(pid_t hp, int pid) {
  std::vector<Fd> out;
  const std::string dir = fmt::format("/proc/{}/fd", hp);
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator(dir, ec)) {
    const std::string self = e.path().string();
    std::string link;
    try {
      link = read_link(self);
    } catch (const Error&) {
      continue;  // closed meanwhile (a zombie's, or an engine's handle)
    }
    if (!link.ends_with(" (deleted)")) continue;
    // The engine's own handles in the job's init (mem_tracking.h), not the job's state.
    if (pid == 1 && is_tracking_handle(link)) continue;
    struct stat st {
    }, named{};
    if (::stat(self.c_str(), &st) < 0 || !S_ISREG(st.st_mode)) continue;
    if (::stat(link.c_str(), &named) == 0 && named.st_dev == st.st_dev && named.st_ino == st.st_ino)
      continue;  // its name really ends so
    const std::string was = link.substr(0, link.size() - std::strlen(" (deleted)"));
    if (st.st_nlink > 0 && !is_memfd(was)) continue;
    Fd f;
    f.fd = std::stoi(e.path().filename().string());
    f.path = was;
    f.deleted_key = file_key(st.st_dev, st.st_ino);
    out.push_back(std::move(f));
  }
  if (ec) fail_errno("process {}: cannot list {}", hp, dir);
  std::sort(out.begin(), out.end(), [](const Fd& a, const Fd& b) { return a.fd < b.fd; });
  return out;
}

}  // namespace

std::vector<DeletedSource> open_deleted_files(std::span<DumpProcess> procs,
                                              const std::set<std::string>& skip, bool scan_fds) {
  std::vector<DeletedSource> out;
  std::set<std::string> seen = skip;
  auto open_one = [&](const DumpProcess& p, const std::string& key, const std::string& path,
                      const std::string& source, const std::string& where) {
    if (!seen.insert(key).second) return;
    UniqueFd fd(::open(source.c_str(), O_RDONLY | O_CLOEXEC));
    if (!fd) fail_errno("{}: cannot open the deleted file through {}", where, source);
    struct stat st {};
    if (::fstat(fd.get(), &st) < 0) fail_errno("{}: fstat {}", where, source);
    if (!S_ISREG(st.st_mode))
      fail_unsupported("{}: a deleted file of type {:o} is not supported", where,
                       st.st_mode & S_IFMT);
    if (file_key(st.st_dev, st.st_ino) != key)
      fail("{}: {} is no longer the file seen before (process {})", where, source, p.rec.pid);
    DeletedFile d;
    d.key = key;
    d.path = path;
    d.mode = st.st_mode & 07777;
    d.uid = st.st_uid;
    d.gid = st.st_gid;
    d.size = static_cast<std::uint64_t>(st.st_size);
    d.seals = dump_seals(fd.get(), where);
    out.push_back({std::move(d), std::move(fd), fmt::format("{} ({})", source, path)});
  };
  for (auto& p : procs) {
    if (p.zombie) continue;
    const std::vector<Fd> scanned =
        scan_fds ? scan_deleted_fds(p.host_pid, p.rec.pid) : std::vector<Fd>{};
    for (auto& f : scan_fds ? scanned : p.rec.fds)
      if (!f.deleted_key.empty())
        open_one(p, f.deleted_key, f.path, fmt::format("/proc/{}/fd/{}", p.host_pid, f.fd),
                 fmt::format("process {} (pid {} in the job), fd {} -> {} (deleted)", p.host_pid,
                             p.rec.pid, f.fd, f.path));
    for (auto& v : p.rec.vmas)
      if (!v.deleted_key.empty())
        open_one(p, v.deleted_key, v.path,
                 fmt::format("/proc/{}/map_files/{:x}-{:x}", p.host_pid, v.start, v.end),
                 fmt::format("process {} (pid {} in the job), mapping {:#x}-{:#x} {} (deleted)",
                             p.host_pid, p.rec.pid, v.start, v.end, v.path));
  }
  return out;
}

void dump_deleted_files_data(std::vector<DeletedSource>& sources, Manifest& m, ImageWriter& img,
                             PageHashing* hashing) {
  std::vector<std::byte> buf(kIo);
  for (DeletedSource& s : sources) {
    append_object_data(s.file, s.fd.get(), img, buf, hashing, s.what);
    m.deleted_files.push_back(std::move(s.file));
  }
}

void dump_deleted_files(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img,
                        PageHashing* hashing) {
  // A file that is also a shm object (a memfd both mapped and held) is stored once,
  // as the object (dump_shm ran before).
  std::set<std::string> shm_keys;
  for (auto& o : m.shm) shm_keys.insert(o.key);
  std::vector<DeletedSource> sources = open_deleted_files(procs, shm_keys, false);
  dump_deleted_files_data(sources, m, img, hashing);
}

void check_deleted_files(const Manifest& m) {
  for (auto& d : m.deleted_files) {
    if (is_memfd(d.path)) continue;
    std::string dir = parent_dir(d.path);
    struct stat st {};
    if (!probe_path(dir, st))
      fail_errno("restore refused: the directory {} of deleted file {} is missing", dir, d.path);
    if (!S_ISDIR(st.st_mode))
      fail("restore refused: {} (where deleted file {} was) is not a directory", dir, d.path);
  }
}

void create_deleted_files(InitStash& stash, const InjectionArea& area, const Manifest& m,
                          PageReader& pages, ShmTable& table, ParentChain* chain) {
  if (m.deleted_files.empty()) return;
  std::vector<std::byte> buf(kIo);
  for (auto& d : m.deleted_files) {
    std::string what = fmt::format("deleted file {}", d.path);
    Injector& inj = stash.inj();
    const pid_t ip = stash.init().host_pid;
    long in_init;
    const bool memfd = is_memfd(d.path);
    if (memfd) {
      // A memfd (held as an fd only: mapped ones are shm objects) keeps its name. Made
      // by init itself, so that init holds the description memfd_create returns, which
      // (unlike a reopen) has no write access that would make exec fail (memfd.h).
      in_init = create_memfd(inj, ip, area, memfd_name(d.path), what);
    } else {
      // In its old directory, which the user controls: made by init as the file's owner
      // in the job, never through a link (fsaccess.h).
      act_as(inj, ip, area,
             &owner_of(
                 m, [&](const Fd& f) { return f.deleted_key == d.key; },
                 [&](const Vma& v) { return v.deleted_key == d.key; }),
             what);
      in_init = create_unlinked(inj, ip, area, parent_dir(d.path), d.mode & 0777, what);
      set_owner_and_mode(inj, ip, in_init, d.uid, d.gid, d.mode, what);
      act_as(inj, ip, area, nullptr, what);
    }
    table[d.key] = stash.park(in_init, what);
    UniqueFd fd = stash.take(table[d.key], what);
    if (memfd) {
      // The mode after the owner: fchown clears set-user-ID bits.
      if (::fchown(fd.get(), d.uid, d.gid) < 0)
        fail_errno("{}: fchown to {}:{}", what, d.uid, d.gid);
      if (::fchmod(fd.get(), d.mode) < 0) fail_errno("{}: fchmod {:o}", what, d.mode);
    }
    if (::ftruncate(fd.get(), static_cast<off_t>(d.size)) < 0)
      fail_errno("{}: ftruncate to {} bytes", what, d.size);
    fill_file_data(fd.get(), d.size, d.runs, pages, buf, what);
    if (!d.parent_runs.empty()) {
      if (!chain) fail_image("image: {} has pages in a parent image but no parent", what);
      chain->fill_object(d.key, fd.get(), d.size, d.parent_runs);
    }
    seal_before_mapping(fd.get(), d.seals, what);
  }
}

}  // namespace fsched::ckpt
