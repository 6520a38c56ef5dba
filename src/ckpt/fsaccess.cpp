// Restore-time file-system access on the job's behalf; see fsaccess.h. Interfaces:
// openat2(2) (struct open_how, RESOLVE_NO_SYMLINKS), setfsuid(2), setfsgid(2),
// setgroups(2), pidfd_getfd(2), capabilities(7) on the effect of fsuid changes.
#include "ckpt/fsaccess.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "ckpt/restore_context.h"
#include "common/error.h"
#include "common/text.h"

namespace fsched::ckpt {

FileId file_id_of(const struct stat& st) {
  FileId id;
  id.ino = st.st_ino;
  id.size = static_cast<std::uint64_t>(st.st_size);
  id.mtime_ns = st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
  id.dev = st.st_dev;
  id.mode = st.st_mode;
  id.uid = st.st_uid;
  id.gid = st.st_gid;
  return id;
}

const std::string& boot_id() {
  static const std::string id = [] {
    std::string text = read_file("/proc/sys/kernel/random/boot_id");
    return std::string(trim(text));
  }();
  return id;
}

void act_as(Injector& inj, pid_t host_pid, const InjectionArea& area, const Process* as,
            const std::string& who) {
  std::vector<gid_t> groups;
  unsigned fsuid = 0, fsgid = 0;
  if (as) {
    if (as->uids.size() != 4 || as->gids.size() != 4)
      fail_image("image: bad credentials of process {}", as->pid);
    groups.assign(as->groups.begin(), as->groups.end());
    fsuid = as->uids[3];
    fsgid = as->gids[3];
  }
  if (groups.size() * sizeof(gid_t) > area.data_size() / 2)
    fail_image("image: too many groups in process {}", as ? as->pid : 0);
  if (!groups.empty())
    remote_write(host_pid, area.data(), groups.data(), groups.size() * sizeof(gid_t));
  inj.call_ok(who + ": setgroups", SYS_setgroups, groups.size(), area.data());
  // setfsuid/setfsgid return the previous id and never fail: ask again to see that the
  // kernel took the new one.
  inj.call(SYS_setfsgid, fsgid);
  inj.call(SYS_setfsuid, fsuid);
  long now_gid = inj.call(SYS_setfsgid, static_cast<std::uint64_t>(-1));
  long now_uid = inj.call(SYS_setfsuid, static_cast<std::uint64_t>(-1));
  if (now_gid != static_cast<long>(fsgid) || now_uid != static_cast<long>(fsuid))
    fail("{}: cannot take fsuid {} fsgid {} (now {} {})", who, fsuid, fsgid, now_uid, now_gid);
}

const Process& owner_of(const Manifest& m, const std::function<bool(const Fd&)>& fd_holds,
                        const std::function<bool(const Vma&)>& vma_holds) {
  for (const Process& p : m.processes) {
    if (p.zombie) continue;
    for (const Fd& f : p.fds)
      if (fd_holds(f)) return p;
    if (vma_holds)
      for (const Vma& v : p.vmas)
        if (vma_holds(v)) return p;
  }
  return m.processes.at(0);
}

long open_no_symlinks(Injector& inj, pid_t host_pid, const InjectionArea& area,
                      const std::string& path, int flags, unsigned mode, const std::string& who) {
  open_how how{};
  how.flags = static_cast<std::uint64_t>(flags | O_CLOEXEC);
  // open_how.mode must be 0 unless the open may create (openat2(2)).
  if ((flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE) how.mode = mode;
  how.resolve = RESOLVE_NO_SYMLINKS;
  std::uint64_t how_at = area.data() + area.data_size() - 64;
  remote_write(host_pid, how_at, &how, sizeof how);
  std::uint64_t pa = put_string(host_pid, area, 0, path);
  long fd = inj.call(SYS_openat2, static_cast<std::uint64_t>(AT_FDCWD), pa, how_at, sizeof how);
  if (fd == -ELOOP)
    fail(
        "restore refused: {}: {} is a symbolic link or has one in its path, which the dump did "
        "not see",
        who, path);
  if (fd < 0) throw Error(fmt::format("{}: open {}", who, path), static_cast<int>(-fd));
  return fd;
}

struct stat stat_of_fd(pid_t host_pid, long fd, const std::string& who) {
  UniqueFd mine = grab_fd(host_pid, static_cast<int>(fd), who);
  struct stat st {};
  if (::fstat(mine.get(), &st) < 0) fail_errno("{}: fstat", who);
  return st;
}

void set_owner_and_mode(Injector& inj, pid_t host_pid, long fd, unsigned uid, unsigned gid,
                        unsigned mode, const std::string& who) {
  struct stat st = stat_of_fd(host_pid, fd, who);
  if (st.st_uid != uid || st.st_gid != gid)  // made by another member of the job
    inj.call_ok(fmt::format("{}: fchown to {}:{}", who, uid, gid), SYS_fchown,
                static_cast<std::uint64_t>(fd), uid, gid);
  inj.call_ok(fmt::format("{}: fchmod {:o}", who, mode), SYS_fchmod, static_cast<std::uint64_t>(fd),
              mode);
}

void check_identity(pid_t host_pid, long fd, const FileId& want, SizeRule rule,
                    const std::string& dump_boot, const std::string& who) {
  struct stat st = stat_of_fd(host_pid, fd, who);
  auto refuse = [&](const std::string& what) {
    fail("restore refused: {}: {} since the dump; not the file the job had", who, what);
  };
  // Inode and device only where a different file would be destroyed or run: a file
  // the job writes (truncated next), maps or executes. One it only reads may be a copy
  // made anew (the job script in the node's spool, a file restored on another node);
  // the job's credentials and the no-symlink rule keep it to what the user may read.
  const bool same_file = rule != SizeRule::kAny;
  if (same_file && want.ino && st.st_ino != want.ino)
    refuse(fmt::format("inode {} -> {}", want.ino, st.st_ino));
  if (want.mode && (st.st_mode & S_IFMT) != (want.mode & S_IFMT))
    refuse(fmt::format("file type {:o} -> {:o}", want.mode & S_IFMT, st.st_mode & S_IFMT));
  if (want.mode && (st.st_uid != want.uid || st.st_gid != want.gid))
    refuse(fmt::format("owner {}:{} -> {}:{}", want.uid, want.gid, st.st_uid, st.st_gid));
  if (same_file && want.dev && !dump_boot.empty() && dump_boot == boot_id() &&
      st.st_dev != want.dev)
    refuse(fmt::format("device {:#x} -> {:#x}", want.dev, st.st_dev));
  auto size = static_cast<std::uint64_t>(st.st_size);
  std::int64_t mtime = st.st_mtim.tv_sec * 1000000000LL + st.st_mtim.tv_nsec;
  if (rule == SizeRule::kAtLeast && size < want.size)
    refuse(fmt::format("shorter ({} bytes) than at dump time ({} bytes)", size, want.size));
  if (rule == SizeRule::kSame && (size != want.size || mtime != want.mtime_ns))
    refuse(fmt::format("changed (size {} -> {}, mtime changed: {})", want.size, size,
                       mtime != want.mtime_ns ? "yes" : "no"));
}

bool probe_path(const std::string& path, struct stat& st) {
  open_how how{};
  how.flags = O_PATH | O_CLOEXEC;
  how.resolve = RESOLVE_NO_SYMLINKS;
  UniqueFd fd(static_cast<int>(::syscall(SYS_openat2, AT_FDCWD, path.c_str(), &how, sizeof how)));
  if (!fd) return false;
  return ::fstat(fd.get(), &st) == 0;
}

}  // namespace fsched::ckpt
