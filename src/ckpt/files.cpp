// Files: the executable, the working directory and open file descriptors. Every fd
// is classified by its /proc link and stat(2) and handed to the FdOps of its kind
// (fd_ops.h; the table is at the end of this file); regular files, directories and
// basic character devices are this file's own kinds, reopened by path with their
// flags and offsets. Fds sharing one open file description (dup, fork) are restored
// shared, via pidfd_getfd(2). Files open for writing are truncated back to their size
// at dump time, so that the restored job writes no byte twice. Files deleted while
// open are kept in the image and recreated (deleted.cpp). Interfaces: /proc/PID/fd,
// /proc/PID/fdinfo (proc(5)), kcmp(2) KCMP_FILE.
#include "ckpt/files.h"

#include <fcntl.h>
#include <linux/kcmp.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstring>
#include <filesystem>
#include <set>
#include <sstream>

#include "ckpt/deleted.h"
#include "ckpt/eventfds.h"
#include "ckpt/fd_ops.h"
#include "ckpt/fown.h"
#include "ckpt/fsaccess.h"
#include "ckpt/mem_tracking.h"
#include "ckpt/inet.h"
#include "ckpt/inotify.h"
#include "ckpt/memfd.h"
#include "ckpt/netlink.h"
#include "ckpt/pidfd.h"
#include "ckpt/locks.h"
#include "ckpt/pipes.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "ckpt/shmem.h"
#include "ckpt/sockets.h"
#include "ckpt/tty.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

const char* const kDevices[] = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random",
                                "/dev/urandom"};

bool writable(const Fd& f) { return (f.flags & O_ACCMODE) != O_RDONLY; }

// The flags of fd `fd` of process `hp`, from /proc/PID/fdinfo (proc(5)).
int fdinfo_flags(pid_t hp, int fd, const std::string& who) {
  std::istringstream info(read_file(fmt::format("/proc/{}/fdinfo/{}", hp, fd)));
  std::string key;
  while (info >> key) {
    if (key == "flags:") {
      int flags = 0;
      if (info >> std::oct >> flags) return flags;
      break;
    }
    info.ignore(1 << 20, '\n');
  }
  fail("{}: no flags in /proc/{}/fdinfo/{}", who, hp, fd);
}

// The key of the named /dev/shm object (shmem.cpp) that fd f holds, "" if none: the
// object is made again by name before the fds, and the fd reopens that one, whatever
// its path holds at restore time.
std::string named_shm_key(const Manifest& m, const Fd& f) {
  if (f.kind != FdKind::kFile || !f.deleted_key.empty()) return "";
  for (auto& o : m.shm)
    if (!o.path.empty() && o.path == f.path) return o.key;
  return "";
}

// ---- regular files, directories, character devices ---------------------------------

void dump_file(const FdDumpCtx& c, Fd& f) {
  f.file = file_id_of(c.st);
  if (!c.deleted) return;
  // Unlinked while open: its contents go into the image (deleted.cpp).
  std::string was = c.link.substr(0, c.link.size() - std::strlen(" (deleted)"));
  if (c.st.st_nlink > 0 && was.rfind("/memfd:", 0) != 0)
    fail_unsupported(
        "{}: the file was renamed or deleted but has {} other hard link(s): not supported", c.where,
        c.st.st_nlink);
  f.path = was;
  f.deleted_key = file_key(c.st.st_dev, c.st.st_ino);
}

void dump_dir(const FdDumpCtx& c, Fd& f) { f.file = file_id_of(c.st); }

void dump_chr(const FdDumpCtx& c, Fd&) {
  bool ok = false;
  for (const char* d : kDevices) ok = ok || c.link == d;
  if (!ok) fail_unsupported("{}: this device is not supported", c.where);
}

// Opens f.path as the job, checks that it is the file the dump saw (`want`, by
// `rule`), and returns the fd in the process.
long open_checked(const FdRestoreCtx& c, const Fd& f, const FileId& want, SizeRule rule,
                  const std::string& who) {
  long fd = open_no_symlinks(c.inj(), c.host_pid(), c.area, f.path, reopen_flags(f), 0, who);
  check_identity(c.host_pid(), fd, want, rule, c.proc.image->boot_id, who);
  return fd;
}

long open_file(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  Injector& inj = c.inj();
  std::string key = !f.deleted_key.empty() ? f.deleted_key : named_shm_key(*c.proc.image, f);
  if (!key.empty() && memfd_gets_original(*c.proc.image, f)) {
    // The memfd's own description (memfd.h: a reopen would have write access, and the
    // job's exec of it fail with ETXTBSY), with this fd's status flags.
    long fd = take_from_init(inj, shm_fd_in_init(c.objects, key), who);
    inj.call_ok(who + ": fcntl(F_SETFL)", SYS_fcntl, static_cast<std::uint64_t>(fd), F_SETFL,
                static_cast<std::uint64_t>(f.flags & (O_APPEND | O_NONBLOCK | O_NOATIME)));
    return fd;
  }
  if (!key.empty()) {
    // The file recreated in init, reopened through /proc/self/fd so that this fd has
    // an open file description of its own, with its own flags and offset.
    long held = take_from_init(inj, shm_fd_in_init(c.objects, key), who);
    std::uint64_t path = put_string(c.host_pid(), c.area, 0, fmt::format("/proc/self/fd/{}", held));
    long tmp = inj.call(SYS_openat, static_cast<std::uint64_t>(AT_FDCWD), path,
                        // (through a /proc link, which O_NOFOLLOW would refuse)
                        static_cast<std::uint64_t>((reopen_flags(f) & ~O_NOFOLLOW) | O_CLOEXEC), 0);
    inj.call(SYS_close, static_cast<std::uint64_t>(held));
    if (tmp < 0)
      throw Error(who + ": reopening the recreated deleted file", static_cast<int>(-tmp));
    return tmp;
  }
  const bool written = writable(f);
  long tmp = open_checked(c, f, f.file, written ? SizeRule::kAtLeast : SizeRule::kAny, who);
  // The run after the restore writes no byte twice. Through the fd just checked,
  // as the job: a path could name another file by now.
  if (written)
    inj.call_ok(fmt::format("{}: ftruncate to its dump-time size {} bytes", who, f.file.size),
                SYS_ftruncate, static_cast<std::uint64_t>(tmp), f.file.size);
  return tmp;
}

long open_dir_or_device(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  return open_checked(c, f, f.file, SizeRule::kAny, who);
}

const FdOps kFileFdOps{.kind = FdKind::kFile,
                       .anon_link = nullptr,
                       .dump = dump_file,
                       .open = open_file,
                       .finish = nullptr,
                       .shareable = true,
                       .seekable = true};
// Shareable: a dup'd directory shares its readdir position and flags, a dup'd device
// its flags.
const FdOps kDirFdOps{.kind = FdKind::kDir,
                      .anon_link = nullptr,
                      .dump = dump_dir,
                      .open = open_dir_or_device,
                      .finish = nullptr,
                      .shareable = true,
                      .seekable = true};
const FdOps kChrFdOps{.kind = FdKind::kChr,
                      .anon_link = nullptr,
                      .dump = dump_chr,
                      .open = open_dir_or_device,
                      .finish = nullptr,
                      .shareable = true,
                      .seekable = false};

// ---- the table ---------------------------------------------------------------------

// In FdKind order; fd_ops() checks each entry's kind.
constexpr std::array<const FdOps*, kFdKinds> kFdOpsTable{
    &kFileFdOps,    &kDirFdOps,     &kChrFdOps,     &kPipeFdOps,    &kFifoFdOps,
    &kUnixFdOps,    &kEventfdFdOps, &kEpollFdOps,   &kTimerfdFdOps, &kSignalfdFdOps,
    &kInotifyFdOps, &kPidfdFdOps,   &kNetlinkFdOps, &kInetFdOps,    &kPtyFdOps,
};

}  // namespace

FdKind kind_by_type(const struct stat& st, const std::string& link, const std::string& where) {
  if (S_ISREG(st.st_mode)) return FdKind::kFile;
  if (S_ISDIR(st.st_mode)) return FdKind::kDir;
  if (S_ISFIFO(st.st_mode)) return link.rfind("pipe:[", 0) == 0 ? FdKind::kPipe : FdKind::kFifo;
  // Terminals go to tty.cpp, which takes pseudo-terminals and names what it refuses.
  if (S_ISCHR(st.st_mode)) return is_tty_device(st) ? FdKind::kPty : FdKind::kChr;
  fail_unsupported("{}: unsupported file type {:o}", where, st.st_mode & S_IFMT);
}

void parse_fdinfo(const std::string& fdinfo, Fd& f) {
  std::istringstream info(fdinfo);
  std::string key;
  while (info >> key) {
    if (key == "pos:")
      info >> f.pos;
    else if (key == "flags:")
      info >> std::oct >> f.flags >> std::dec;
    else
      info.ignore(1 << 20, '\n');
  }
}

const FdOps& fd_ops(FdKind k) {
  auto i = static_cast<std::size_t>(k);
  if (i >= kFdOpsTable.size() || kFdOpsTable[i]->kind != k)
    fail("internal: no fd operations for kind {}", static_cast<int>(k));
  return *kFdOpsTable[i];
}

int reopen_flags(const Fd& f) {
  // fdinfo keeps the flags of the open that created the file: O_CREAT and the like
  // must not act a second time, and a file made with O_TMPFILE (Python's
  // tempfile.TemporaryFile, for one) still shows O_TMPFILE, which includes O_DIRECTORY.
  // O_ASYNC given to open(2) shows in the flags but sets up no signal (open(2) BUGS):
  // restore_files sets it with F_SETFL, which does.
  int fl = f.flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY | O_ASYNC);
  if ((f.flags & O_TMPFILE) == O_TMPFILE) fl &= ~O_TMPFILE;
  return fl;
}

long adopt_from_init(const FdRestoreCtx& c, int init_fd, const Fd& f, const std::string& who) {
  long tmp = take_from_init(c.inj(), init_fd, who);
  c.inj().call_ok(who + ": fcntl(F_SETFL)", SYS_fcntl, static_cast<std::uint64_t>(tmp), F_SETFL,
                  static_cast<std::uint64_t>(f.flags & (O_NONBLOCK | O_APPEND | O_DIRECT)));
  return tmp;
}

FileId stat_file_id(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) < 0) fail_errno("cannot stat {}", path);
  return file_id_of(st);
}

void dump_files(DumpProcess& p, std::span<DumpProcess> all) {
  pid_t hp = p.host_pid;
  Process& r = p.rec;
  r.exe = read_link(fmt::format("/proc/{}/exe", hp));
  if (r.exe.ends_with(" (deleted)"))
    fail_unsupported("process {} (pid {} in the job): its executable {} was deleted", hp, r.pid,
                     r.exe);
  r.exe_file = stat_file_id(r.exe);
  r.cwd = read_link(fmt::format("/proc/{}/cwd", hp));
  if (r.cwd.ends_with(" (deleted)"))
    fail_unsupported("process {} (pid {} in the job): its working directory {} was deleted", hp,
                     r.pid, r.cwd);
  r.cwd_file = stat_file_id(fmt::format("/proc/{}/cwd", hp));

  // An fd table shared with another process of the job (clone(2) CLONE_FILES): with
  // its parent, the restore creates the process so again (pstree.cpp); with another
  // process, it cannot.
  r.files_of_parent = false;
  for (auto& q : all) {
    if (&q == &p) break;
    if (q.rec.pid == r.ppid && ::syscall(SYS_kcmp, hp, q.host_pid, KCMP_FILES, 0, 0) == 0)
      r.files_of_parent = true;
  }
  for (auto& q : all) {
    if (&q == &p) break;
    if (!r.files_of_parent && ::syscall(SYS_kcmp, hp, q.host_pid, KCMP_FILES, 0, 0) == 0)
      fail_unsupported(
          "process {} (pid {} in the job) shares its file descriptor table with process {} (pid "
          "{} in the job), which is not its parent (clone(2) CLONE_FILES): not supported",
          hp, r.pid, q.host_pid, q.rec.pid);
  }

  std::vector<int> fds;
  for (auto& e : std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", hp)))
    fds.push_back(std::stoi(e.path().filename().string()));
  std::sort(fds.begin(), fds.end());
  r.fds.clear();
  for (int fd : fds) {
    const std::string link = read_link(fmt::format("/proc/{}/fd/{}", hp, fd));
    // The engine's own handles in the job's init (mem_tracking.h), not the job's state.
    if (r.pid == 1 && is_tracking_handle(link)) continue;
    const std::string where =
        fmt::format("process {} (pid {} in the job), fd {} -> {}", hp, r.pid, fd, link);
    Fd f;
    f.fd = fd;
    f.path = link;
    const std::string fdinfo = read_file(fmt::format("/proc/{}/fdinfo/{}", hp, fd));
    parse_fdinfo(fdinfo, f);
    // Its kind: sockets and anonymous inodes by their link, the rest by file type.
    struct stat st {};
    bool deleted = false;
    const FdOps* ops = nullptr;
    if (link.rfind("socket:[", 0) == 0) {
      // By family: TCP and UDP (inet.cpp); the rest are checked against the kernel's
      // table of Unix sockets by dump_sockets.
      ops = &socket_fd_ops(hp, fd, where);
    } else if (link.rfind("anon_inode:", 0) == 0) {
      for (const FdOps* o : kFdOpsTable)
        if (o->anon_link && link == o->anon_link) ops = o;
      if (!ops)
        fail_unsupported("{}: this kind of file (fanotify, io_uring ...) is not supported yet",
                         where);
    } else {
      const std::string self = fmt::format("/proc/{}/fd/{}", hp, fd);
      if (::stat(self.c_str(), &st) < 0) fail_errno("{}: cannot stat", where);
      // A file of a proc(5) file system names processes by the pids of the namespace
      // it was mounted for, and the restored job's /proc is another one.
      struct statfs fs {};
      if (::statfs(self.c_str(), &fs) == 0 && fs.f_type == PROC_SUPER_MAGIC)
        fail_unsupported(
            "{}: files of /proc are not supported (they would name other processes "
            "after a restore)",
            where);
      if (link.ends_with(" (deleted)")) {
        // Unlinked while open, unless the file's name really ends so.
        struct stat named {};
        deleted = !(::stat(link.c_str(), &named) == 0 && named.st_dev == st.st_dev &&
                    named.st_ino == st.st_ino);
        // A pty slave whose master was closed: devpts removed its /dev/pts/N entry.
        if (deleted && S_ISCHR(st.st_mode) && link.starts_with("/dev/pts/"))
          fail_unsupported(
              "{}: a pseudo-terminal slave whose master was closed (hung up; the master of "
              "this pseudo-terminal is not open in the job) is not supported",
              where);
        if (deleted && !S_ISREG(st.st_mode))
          fail_unsupported("{}: this deleted file (type {:o}) is not supported", where,
                           st.st_mode & S_IFMT);
      }
      ops = &fd_ops(kind_by_type(st, link, where));
    }
    f.kind = ops->kind;
    ops->dump(FdDumpCtx{.proc = p,
                        .link = link,
                        .fdinfo = fdinfo,
                        .st = st,
                        .deleted = deleted,
                        .where = where},
              f);
    // One open file description shared with an fd recorded earlier (dup, fork)? Two
    // fds of one object that kcmp(2) tells apart are separate opens, restored apart.
    if (ops->shareable) {
      for (auto& q : all) {
        for (auto& g : q.rec.fds) {
          if (f.shared_fd >= 0) break;
          if (g.kind != f.kind || g.file.ino != f.file.ino || g.path != f.path || g.shared_fd >= 0)
            continue;
          if (&q == &p && g.fd == fd) continue;
          if (::syscall(SYS_kcmp, hp, q.host_pid, KCMP_FILE, fd, g.fd) == 0) {
            f.shared_pid = q.rec.pid;
            f.shared_fd = g.fd;
          }
        }
        if (&q == &p) break;
      }
    }
    dump_fd_locks(p, f, fdinfo, where);
    dump_fd_owner(p, all, f, where);
    // An epoll watches the files at its target fd numbers in this process; those that
    // restore_files adds again by number must be the same (eventfds.cpp).
    if (f.kind == FdKind::kEpoll && f.shared_fd < 0) check_epoll_targets(hp, f, where);
    r.fds.push_back(std::move(f));
  }
}

void check_files(const Manifest& m) {
  // A first look by the restorer, for a clear refusal before any process exists. What
  // counts is the check of every fd opened in the job (restore_files, restore_memory),
  // since the user may change files between this look and those opens.
  auto look = [](const std::string& path, const std::string& what) {
    struct stat st {};
    if (!probe_path(path, st)) {
      if (errno == ELOOP)
        fail(
            "restore refused: {} {} is a symbolic link or has one in its path, which the dump "
            "did not see",
            what, path);
      fail_errno("restore refused: {} {} is missing", what, path);
    }
    return file_id_of(st);
  };
  auto same = [&](const std::string& path, const FileId& want, const std::string& what) {
    FileId now = look(path, what);
    if (now.ino != want.ino || now.size != want.size || now.mtime_ns != want.mtime_ns)
      fail(
          "restore refused: {} {} changed since the dump (inode {} -> {}, size {} -> {}, mtime "
          "changed: {})",
          what, path, want.ino, now.ino, want.size, now.size,
          now.mtime_ns != want.mtime_ns ? "yes" : "no");
  };
  for (auto& p : m.processes) {
    if (p.zombie) continue;
    same(p.exe, p.exe_file, "executable");
    for (auto& v : p.vmas)
      if (v.kind == VmaKind::kFile && v.deleted_key.empty()) same(v.path, v.file, "mapped file");
    for (auto& f : p.fds) {
      if (f.kind != FdKind::kFile || f.shared_fd >= 0 || !f.deleted_key.empty() ||
          !named_shm_key(m, f).empty())
        continue;
      FileId now = look(f.path, fmt::format("process {} fd {}:", p.pid, f.fd));
      if (writable(f) && now.size < f.file.size)
        fail(
            "restore refused: process {} fd {}: {} is shorter ({} bytes) than at dump time ({} "
            "bytes)",
            p.pid, f.fd, f.path, now.size, f.file.size);
    }
  }
}

void restore_files(RestoreProcess& p, const InjectionArea& area, const PipeTable& pipes,
                   const SocketTable& sockets, const ShmTable& objects) {
  const Process& r = *p.rec;
  Injector& inj = p.leader();
  pid_t hp = p.host_pid;
  const std::string& boot = p.image->boot_id;
  {
    // As the job (act_as in restore()): no link the dump did not see, the same directory.
    std::string who = fmt::format("process {}: working directory", r.pid);
    long dir = open_no_symlinks(inj, hp, area, r.cwd, O_PATH | O_DIRECTORY, 0, who);
    FileId want = r.cwd_file;
    want.size = 0;
    check_identity(hp, dir, want, SizeRule::kAny, boot, who);
    inj.call_ok(who + ": fchdir " + r.cwd, SYS_fchdir, static_cast<std::uint64_t>(dir));
    inj.call(SYS_close, static_cast<std::uint64_t>(dir));
  }
  // Its fds are those of its parent, restored before it in the table they share.
  if (r.files_of_parent) return;
  const FdRestoreCtx ctx{
      .proc = p, .area = area, .pipes = pipes, .sockets = sockets, .objects = objects};
  for (const Fd& f : r.fds) {
    std::string who = fmt::format("process {} fd {} ({})", r.pid, f.fd, f.path);
    const FdOps& ops = fd_ops(f.kind);
    const std::uint64_t cloexec = (f.flags & O_CLOEXEC) ? O_CLOEXEC : 0;
    long tmp;
    if (f.shared_fd >= 0 && f.shared_pid == r.pid) {
      tmp = inj.call_ok(who + ": dup", SYS_fcntl, static_cast<std::uint64_t>(f.shared_fd),
                        F_DUPFD_CLOEXEC, 0);
    } else if (f.shared_fd >= 0) {
      // Another process's fd: the same open file description, via pidfd_getfd(2).
      tmp = take_fd(inj, f.shared_pid, f.shared_fd, who);
    } else {
      tmp = ops.open(ctx, f, who);
    }
    if (tmp != f.fd) {
      inj.call_ok(who + ": dup3", SYS_dup3, static_cast<std::uint64_t>(tmp),
                  static_cast<std::uint64_t>(f.fd), cloexec);
      inj.call(SYS_close, static_cast<std::uint64_t>(tmp));
    } else if (!cloexec) {
      inj.call_ok(who + ": fcntl(F_SETFD)", SYS_fcntl, static_cast<std::uint64_t>(f.fd), F_SETFD,
                  0);
    }
    if (f.shared_fd < 0 && ops.seekable && f.pos)
      inj.call_ok(who + ": lseek", SYS_lseek, static_cast<std::uint64_t>(f.fd),
                  static_cast<std::uint64_t>(f.pos), SEEK_SET);
  }
  // Last, what names other fds of the process (epoll targets).
  for (const Fd& f : r.fds) {
    const FdOps& ops = fd_ops(f.kind);
    if (ops.finish && f.shared_fd < 0)
      ops.finish(ctx, f, fmt::format("process {} {} fd {}", r.pid, to_string(f.kind), f.fd));
  }
  // The status flags of every fd, whatever its kind, as the kernel reports them: set
  // again where its open left them otherwise (O_ASYNC, which open(2) does not set up;
  // O_NONBLOCK of a kind created without it), and checked, so that no fd comes back
  // with other flags than it had. Except O_ASYNC of an open file description holding a
  // lease: F_SETFL cannot set it on a regular file (no fasync), the lease sets it
  // itself when restore_locks() takes it again, after the credentials.
  std::set<std::pair<int, int>> leased;  // (pid, fd) of descriptions with a lease
  for (const Process& q : p.image->processes)
    for (const Fd& g : q.fds)
      for (const FileLock& l : g.locks)
        if (l.kind == LockKind::kLease) leased.insert({q.pid, g.fd});
  for (const Fd& f : r.fds) {
    std::string who = fmt::format("process {} fd {} ({})", r.pid, f.fd, f.path);
    int settable = kStatusFlags;
    if (leased.count({r.pid, f.fd}) || leased.count({f.shared_pid, f.shared_fd}))
      settable &= ~O_ASYNC;
    int now = fdinfo_flags(hp, f.fd, who);
    if ((now & settable) != (f.flags & settable)) {
      inj.call_ok(who + ": fcntl(F_SETFL)", SYS_fcntl, static_cast<std::uint64_t>(f.fd), F_SETFL,
                  static_cast<std::uint64_t>(f.flags & kStatusFlags));
      now = fdinfo_flags(hp, f.fd, who);
    }
    const int kChecked = settable | O_ACCMODE | O_CLOEXEC;
    if ((now & kChecked) != (f.flags & kChecked))
      fail("{}: restored with flags {:o} instead of {:o}", who, now & kChecked, f.flags & kChecked);
  }
}

}  // namespace fsched::ckpt
