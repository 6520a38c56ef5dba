// Files: the executable, the working directory and open file descriptors (regular
// files, directories, basic character devices), with their flags and offsets; fds
// sharing one open file description (dup, fork) are restored shared, via
// pidfd_getfd(2). Files open for writing are truncated back to their size at dump
// time, so that the restored job writes no byte twice. Files deleted while open are
// kept in the image and recreated (deleted.cpp). Interfaces: /proc/PID/fd,
// /proc/PID/fdinfo (proc(5)), kcmp(2) KCMP_FILE.
#include <fcntl.h>
#include <linux/kcmp.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstring>
#include <filesystem>
#include <sstream>

#include "ckpt/fsaccess.h"
#include "ckpt/parts.h"
#include "ckpt/proc.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

const char* const kDevices[] = {"/dev/null", "/dev/zero", "/dev/full", "/dev/random",
                                "/dev/urandom"};

bool writable(const Fd& f) { return (f.flags & O_ACCMODE) != O_RDONLY; }

// The key of the named /dev/shm object (shmem.cpp) that fd f holds, "" if none: the
// object is made again by name before the fds, and the fd reopens that one, whatever
// its path holds at restore time.
std::string named_shm_key(const Manifest& m, const Fd& f) {
  if (f.kind != "file" || !f.deleted_key.empty()) return "";
  for (auto& o : m.shm)
    if (!o.path.empty() && o.path == f.path) return o.key;
  return "";
}

// Open flags that give an fd its saved status again. fdinfo keeps the flags of the
// open that created the file: O_CREAT and the like must not act a second time, and a
// file made with O_TMPFILE (Python's tempfile.TemporaryFile, for one) still shows
// O_TMPFILE, which includes O_DIRECTORY.
int reopen_flags(const Fd& f) {
  int fl = f.flags & ~(O_CREAT | O_EXCL | O_TRUNC | O_NOCTTY);
  if ((f.flags & O_TMPFILE) == O_TMPFILE) fl &= ~O_TMPFILE;
  return fl;
}

}  // namespace

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
    fail_unsupported("process {} (pid {} in the job): its executable {} was deleted", hp, r.pid, r.exe);
  r.exe_file = stat_file_id(r.exe);
  r.cwd = read_link(fmt::format("/proc/{}/cwd", hp));
  if (r.cwd.ends_with(" (deleted)"))
    fail_unsupported("process {} (pid {} in the job): its working directory {} was deleted", hp, r.pid, r.cwd);
  r.cwd_file = stat_file_id(fmt::format("/proc/{}/cwd", hp));

  std::vector<int> fds;
  for (auto& e : std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", hp)))
    fds.push_back(std::stoi(e.path().filename().string()));
  std::sort(fds.begin(), fds.end());
  r.fds.clear();
  for (int fd : fds) {
    std::string link = read_link(fmt::format("/proc/{}/fd/{}", hp, fd));
    auto where = [&] {
      return fmt::format("process {} (pid {} in the job), fd {} -> {}", hp, r.pid, fd, link);
    };
    Fd f;
    f.fd = fd;
    f.path = link;
    if (link.ends_with(" (deleted)")) {
      // Unlinked while open: its contents go into the image (deleted.cpp). A file whose
      // name really ends so, or one still linked elsewhere, is not that.
      struct stat st {};
      if (::stat(fmt::format("/proc/{}/fd/{}", hp, fd).c_str(), &st) < 0)
        fail_errno("{}: cannot stat", where());
      struct stat named {};
      bool real_name = ::stat(link.c_str(), &named) == 0 && named.st_dev == st.st_dev &&
                       named.st_ino == st.st_ino;
      if (!real_name) {
        std::string was = link.substr(0, link.size() - std::strlen(" (deleted)"));
        if (!S_ISREG(st.st_mode))
          fail_unsupported("{}: this deleted file (type {:o}) is not supported", where(), st.st_mode & S_IFMT);
        if (st.st_nlink > 0 && was.rfind("/memfd:", 0) != 0)
          fail_unsupported("{}: the file was renamed or deleted but has {} other hard link(s): not supported",
               where(), st.st_nlink);
        f.kind = "file";
        f.path = was;
        f.deleted_key = file_key(st.st_dev, st.st_ino);
        f.file = file_id_of(st);
      }
    }
    const std::string fdinfo = read_file(fmt::format("/proc/{}/fdinfo/{}", hp, fd));
    std::istringstream info(fdinfo);
    std::string key;
    while (info >> key) {
      if (key == "pos:") info >> f.pos;
      else if (key == "flags:") info >> std::oct >> f.flags >> std::dec;
      else info.ignore(1 << 20, '\n');
    }
    if (link.rfind("socket:[", 0) == 0) {
      f.kind = "unix";  // checked against the kernel's socket table by dump_sockets
      f.file.ino = std::stoull(link.substr(8));
      f.path.clear();
    } else if (link.rfind("anon_inode:", 0) == 0) {
      if (!dump_event_fd(link, fdinfo, f) && !dump_inotify_fd(link, fdinfo, f, where()))
        fail_unsupported("{}: this kind of file (fanotify, io_uring, pidfd...) is not supported yet",
             where());
      f.path.clear();
    }
    struct stat st {};
    if (f.kind.empty() && ::stat(fmt::format("/proc/{}/fd/{}", hp, fd).c_str(), &st) < 0)
      fail_errno("{}: cannot stat", where());
    if (!f.kind.empty()) {
      // an event fd or a deleted file, filled in above
    } else if (S_ISREG(st.st_mode)) {
      f.kind = "file";
      f.file = file_id_of(st);
    } else if (S_ISDIR(st.st_mode)) {
      f.kind = "dir";
      f.file = file_id_of(st);
    } else if (S_ISFIFO(st.st_mode) && link.rfind("pipe:[", 0) == 0) {
      f.kind = "pipe";
      f.file = FileId{st.st_ino, 0, 0};
      f.path.clear();
    } else if (S_ISFIFO(st.st_mode)) {
      f.kind = "fifo";  // a named pipe: reopened by path, its buffer kept like a pipe's
      f.file = FileId{st.st_ino, 0, 0};
    } else if (S_ISCHR(st.st_mode)) {
      bool ok = false;
      for (const char* d : kDevices) ok = ok || link == d;
      if (!ok) fail_unsupported("{}: this device is not supported", where());
      f.kind = "chr";
    } else {
      fail_unsupported("{}: unsupported file type {:o}", where(), st.st_mode & S_IFMT);
    }
    // One open file description shared with an fd recorded earlier (dup, fork)?
    if (f.kind != "dir" && f.kind != "chr") {
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
        fail("restore refused: {} {} is a symbolic link or has one in its path, which the dump "
             "did not see",
             what, path);
      fail_errno("restore refused: {} {} is missing", what, path);
    }
    return file_id_of(st);
  };
  auto same = [&](const std::string& path, const FileId& want, const std::string& what) {
    FileId now = look(path, what);
    if (now.ino != want.ino || now.size != want.size || now.mtime_ns != want.mtime_ns)
      fail("restore refused: {} {} changed since the dump (inode {} -> {}, size {} -> {}, mtime "
           "changed: {})",
           what, path, want.ino, now.ino, want.size, now.size,
           now.mtime_ns != want.mtime_ns ? "yes" : "no");
  };
  for (auto& p : m.processes) {
    if (p.zombie) continue;
    same(p.exe, p.exe_file, "executable");
    for (auto& v : p.vmas)
      if (v.kind == "file" && v.deleted_key.empty()) same(v.path, v.file, "mapped file");
    for (auto& f : p.fds) {
      if (f.kind != "file" || f.shared_fd >= 0 || !f.deleted_key.empty() ||
          !named_shm_key(m, f).empty())
        continue;
      FileId now = look(f.path, fmt::format("process {} fd {}:", p.pid, f.fd));
      if (writable(f) && now.size < f.file.size)
        fail("restore refused: process {} fd {}: {} is shorter ({} bytes) than at dump time ({} "
             "bytes)",
             p.pid, f.fd, f.path, now.size, f.file.size);
    }
  }
}

UniqueFd grab_fd(pid_t host_pid, int fd, const std::string& what) {
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, host_pid, 0)));
  if (!pidfd) fail_errno("{}: pidfd_open of process {}", what, host_pid);
  UniqueFd mine(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), fd, 0)));
  if (!mine) fail_errno("{}: pidfd_getfd of fd {} of process {}", what, fd, host_pid);
  return mine;
}

InitStash::InitStash(RestoreProcess& init) : init_(init) {
  for (auto& f : init.rec->fds) base_ = std::max(base_, f.fd + 1);
}

int InitStash::park(long fd, const std::string& what) {
  long high = inj().call_ok(what + ": fcntl(F_DUPFD) in init", SYS_fcntl,
                            static_cast<std::uint64_t>(fd), F_DUPFD_CLOEXEC,
                            static_cast<std::uint64_t>(base_));
  inj().call(SYS_close, static_cast<std::uint64_t>(fd));
  parked_.push_back(static_cast<int>(high));
  return static_cast<int>(high);
}

UniqueFd InitStash::take(int init_fd, const std::string& what) const {
  return grab_fd(init_.host_pid, init_fd, what);
}

void InitStash::close_all() {
  for (int fd : parked_) inj().call(SYS_close, static_cast<std::uint64_t>(fd));
  parked_.clear();
}

long take_fd(Injector& inj, int ns_pid, int fd, const std::string& what) {
  long pidfd = inj.call_ok(what + ": pidfd_open", SYS_pidfd_open,
                           static_cast<std::uint64_t>(ns_pid), 0);
  long r = inj.call(SYS_pidfd_getfd, static_cast<std::uint64_t>(pidfd),
                    static_cast<std::uint64_t>(fd), 0);
  inj.call(SYS_close, static_cast<std::uint64_t>(pidfd));
  if (r < 0) throw Error(fmt::format("{}: pidfd_getfd of fd {} of process {}", what, fd, ns_pid),
                         static_cast<int>(-r));
  return r;
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
  for (const Fd& f : r.fds) {
    std::string who = fmt::format("process {} fd {} ({})", r.pid, f.fd, f.path);
    const std::uint64_t cloexec = (f.flags & O_CLOEXEC) ? O_CLOEXEC : 0;
    long tmp;
    if (f.shared_fd >= 0 && f.shared_pid == r.pid) {
      tmp = inj.call_ok(who + ": dup", SYS_fcntl, static_cast<std::uint64_t>(f.shared_fd),
                        F_DUPFD_CLOEXEC, 0);
    } else if (f.shared_fd >= 0 || f.kind == "pipe" || f.kind == "unix") {
      // Another process's fd: the same open file description, via pidfd_getfd(2).
      int from_pid = f.shared_pid, from_fd = f.shared_fd;
      if (f.shared_fd < 0 && f.kind == "unix") {
        auto it = sockets.find(f.file.ino);
        if (it == sockets.end()) fail_image("image: {}: socket {} is not in the image", who, f.file.ino);
        from_pid = 1;
        from_fd = it->second;
      } else if (f.shared_fd < 0) {
        auto it = pipes.find(f.file.ino);
        if (it == pipes.end()) fail_image("image: {}: pipe {} is not in the pipe table", who, f.file.ino);
        from_pid = 1;
        from_fd = (f.flags & O_ACCMODE) == O_RDONLY ? it->second.read_fd : it->second.write_fd;
      }
      tmp = take_fd(inj, from_pid, from_fd, who);
      if (f.shared_fd < 0)
        inj.call_ok(who + ": fcntl(F_SETFL)", SYS_fcntl, static_cast<std::uint64_t>(tmp), F_SETFL,
                    static_cast<std::uint64_t>(f.flags & (O_NONBLOCK | O_APPEND | O_DIRECT)));
    } else if (f.kind == "eventfd" || f.kind == "epoll" || f.kind == "timerfd" ||
               f.kind == "signalfd") {
      tmp = create_event_fd(inj, area, hp, f, who);
    } else if (f.kind == "inotify") {
      tmp = create_inotify_fd(inj, hp, f, who);
    } else if (std::string key = !f.deleted_key.empty() ? f.deleted_key
                                                        : named_shm_key(*p.image, f);
               !key.empty()) {
      // The file recreated in init, reopened through /proc/self/fd so that this fd has
      // an open file description of its own, with its own flags and offset.
      long held = take_from_init(inj, shm_fd_in_init(objects, key), who);
      std::uint64_t path = put_string(hp, area, 0, fmt::format("/proc/self/fd/{}", held));
      tmp = inj.call(SYS_openat, static_cast<std::uint64_t>(AT_FDCWD), path,
                     // (through a /proc link, which O_NOFOLLOW would refuse)
                     static_cast<std::uint64_t>((reopen_flags(f) & ~O_NOFOLLOW) | O_CLOEXEC),
                     0);
      inj.call(SYS_close, static_cast<std::uint64_t>(held));
      if (tmp < 0) throw Error(who + ": reopening the recreated deleted file", static_cast<int>(-tmp));
    } else {
      int oflags = reopen_flags(f);
      // A FIFO open would wait for the other side; init holds it open both ways, and
      // the fd gets its own blocking mode back right after.
      if (f.kind == "fifo") oflags |= O_NONBLOCK;
      tmp = open_no_symlinks(inj, hp, area, f.path, oflags, 0, who);
      // A FIFO may have been made anew by the restore (pipes.cpp): its type is what counts.
      FileId want = f.file;
      if (f.kind == "fifo") want = FileId{.mode = S_IFIFO};
      const bool written = f.kind == "file" && writable(f);
      check_identity(hp, tmp, want, written ? SizeRule::kAtLeast : SizeRule::kAny, boot, who);
      // The run after the restore writes no byte twice. Through the fd just checked,
      // as the job: a path could name another file by now.
      if (written)
        inj.call_ok(fmt::format("{}: ftruncate to its dump-time size {} bytes", who, f.file.size),
                    SYS_ftruncate, static_cast<std::uint64_t>(tmp), f.file.size);
      if (f.kind == "fifo" && !(f.flags & O_NONBLOCK))
        inj.call_ok(who + ": fcntl(F_SETFL)", SYS_fcntl, static_cast<std::uint64_t>(tmp), F_SETFL,
                    static_cast<std::uint64_t>(f.flags & O_APPEND));
    }
    if (tmp != f.fd) {
      inj.call_ok(who + ": dup3", SYS_dup3, static_cast<std::uint64_t>(tmp),
                  static_cast<std::uint64_t>(f.fd), cloexec);
      inj.call(SYS_close, static_cast<std::uint64_t>(tmp));
    } else if (!cloexec) {
      inj.call_ok(who + ": fcntl(F_SETFD)", SYS_fcntl, static_cast<std::uint64_t>(f.fd), F_SETFD, 0);
    }
    if (f.shared_fd < 0 && (f.kind == "file" || f.kind == "dir") && f.pos)
      inj.call_ok(who + ": lseek", SYS_lseek, static_cast<std::uint64_t>(f.fd),
                  static_cast<std::uint64_t>(f.pos), SEEK_SET);
  }
  // Epoll targets last: they name other fds of the process.
  for (const Fd& f : r.fds)
    if (f.kind == "epoll" && f.shared_fd < 0)
      add_epoll_targets(inj, area, hp, f, fmt::format("process {} epoll fd {}", r.pid, f.fd));
}

}  // namespace fsched::ckpt
