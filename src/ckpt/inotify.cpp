// inotify(7) instances: their watches (watch descriptor, watched inode, event mask)
// come from /proc/PID/fdinfo (proc(5)), which also shows a file handle of each watched
// inode; open_by_handle_at(2) on a mount of that file system turns it back into a
// path. On restore the instance is created in the process and the restorer adds the
// watches through its own reference to it (pidfd_getfd(2)), in watch-descriptor order.
// The kernel numbers watches cyclically (the lowest free number above the last one
// given), so a gap left by a removed watch is reproduced by adding and removing a
// throw-away watch. Events queued and not yet read cannot be made again (the kernel
// makes them only from what happens to the watched files): a dump of an instance whose
// queue is not empty (FIONREAD, inotify(7)) is refused rather than losing them; the
// next dump, once the job has read them, goes through.
#include "ckpt/inotify.h"

#include <fcntl.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <sstream>
#include <vector>

#include "ckpt/dump_context.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

// Dummy watches at most, in all, to reproduce gaps in the watch numbering.
constexpr int kMaxFill = 1 << 16;

unsigned kernel_major(std::uint64_t sdev) { return static_cast<unsigned>(sdev >> 20); }
unsigned kernel_minor(std::uint64_t sdev) { return static_cast<unsigned>(sdev & 0xfffff); }

// A mount of the file system with device `sdev`, for open_by_handle_at(2) (which takes no
// O_PATH descriptor);
// one showing the file system's root first, so that paths found through it are whole.
UniqueFd mount_of(std::uint64_t sdev) {
  std::string want = fmt::format("{}:{}", kernel_major(sdev), kernel_minor(sdev));
  std::istringstream in(read_file("/proc/self/mountinfo"));
  std::string line, fallback;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string id, parent, dev, root, point;
    f >> id >> parent >> dev >> root >> point;
    if (dev != want) continue;
    // Mount points with spaces are escaped as \040; such a mount is skipped.
    if (point.find('\\') != std::string::npos) continue;
    if (root == "/") {
      UniqueFd fd(::open(point.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (fd) return fd;
    } else if (fallback.empty()) {
      fallback = point;
    }
  }
  if (!fallback.empty()) {
    UniqueFd fd(::open(fallback.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (fd) return fd;
  }
  return UniqueFd();
}

std::string path_of_watch(const InotifyWatch& w, const std::string& where) {
  auto what = [&] {
    return fmt::format("{}: inotify watch {} (inode {} on device {}:{})", where, w.wd, w.ino,
                       kernel_major(w.sdev), kernel_minor(w.sdev));
  };
  if (w.handle_hex.empty())
    fail_unsupported(
        "{}: the kernel shows no file handle for it (this file system cannot be watched "
        "across a checkpoint)",
        what());
  UniqueFd mnt = mount_of(w.sdev);
  if (!mnt) fail_unsupported("{}: no mount of its file system is visible", what());
  auto bytes = from_hex(w.handle_hex);
  std::vector<unsigned char> buf(sizeof(file_handle) + bytes.size());
  auto* fh = reinterpret_cast<file_handle*>(buf.data());
  fh->handle_bytes = static_cast<unsigned>(bytes.size());
  fh->handle_type = w.handle_type;
  std::memcpy(buf.data() + sizeof(file_handle), bytes.data(), bytes.size());
  UniqueFd obj(
      static_cast<int>(::syscall(SYS_open_by_handle_at, mnt.get(), fh, O_PATH | O_CLOEXEC)));
  if (!obj) fail_errno("{}: open_by_handle_at", what());
  std::string path = read_link(fmt::format("/proc/self/fd/{}", obj.get()));
  if (path.ends_with(" (deleted)"))
    fail_unsupported("{}: the watched file {} was deleted (unsupported)", what(), path);
  struct stat st {};
  if (::lstat(path.c_str(), &st) < 0 || st.st_ino != w.ino ||
      major(st.st_dev) != kernel_major(w.sdev) || minor(st.st_dev) != kernel_minor(w.sdev))
    fail("{}: found as {}, but that path does not lead to it", what(), path);
  return path;
}

// A path to add and remove throw-away watches on: an inode no real watch is on.
std::string dummy_path(const Fd& f, const std::string& who) {
  for (const char* cand : {"/", "/proc", "/sys", "/dev", "/tmp", "/etc"}) {
    struct stat st {};
    if (::stat(cand, &st) < 0) continue;
    bool used = false;
    for (auto& w : f.watches)
      used = used || (w.ino == st.st_ino && kernel_major(w.sdev) == major(st.st_dev) &&
                      kernel_minor(w.sdev) == minor(st.st_dev));
    if (!used) return cand;
  }
  fail("{}: no spare inode to number the watches with", who);
}

}  // namespace

std::vector<InotifyWatch> parse_inotify_fdinfo(const std::string& fdinfo) {
  std::vector<InotifyWatch> out;
  std::istringstream in(fdinfo);
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind("inotify ", 0) != 0) continue;
    InotifyWatch w;
    bool have_wd = false, have_ino = false, have_sdev = false, have_mask = false;
    std::istringstream f(line.substr(8));
    std::string field;
    while (f >> field) {
      auto colon = field.find(':');
      if (colon == std::string::npos) fail("fdinfo: bad inotify field '{}' in '{}'", field, line);
      std::string k = field.substr(0, colon), v = field.substr(colon + 1);
      try {
        // Every number is hexadecimal (fs/notify/fdinfo.c), the handle too.
        if (k == "wd")
          w.wd = static_cast<int>(std::stoul(v, nullptr, 16)), have_wd = true;
        else if (k == "ino")
          w.ino = std::stoull(v, nullptr, 16), have_ino = true;
        else if (k == "sdev")
          w.sdev = std::stoull(v, nullptr, 16), have_sdev = true;
        else if (k == "mask")
          w.mask = static_cast<std::uint32_t>(std::stoul(v, nullptr, 16)), have_mask = true;
        else if (k == "fhandle-type")
          w.handle_type = static_cast<int>(std::stol(v, nullptr, 16));
        else if (k == "f_handle")
          w.handle_hex = v;
      } catch (const std::logic_error&) {
        fail("fdinfo: bad inotify value '{}' in '{}'", field, line);
      }
    }
    if (!have_wd || !have_ino || !have_sdev || !have_mask || w.wd <= 0)
      fail("fdinfo: incomplete inotify line '{}'", line);
    if (w.handle_hex.size() % 2 ||
        w.handle_hex.find_first_not_of("0123456789abcdefABCDEF") != std::string::npos)
      fail("fdinfo: bad file handle in '{}'", line);
    out.push_back(std::move(w));
  }
  std::sort(out.begin(), out.end(), [](auto& a, auto& b) { return a.wd < b.wd; });
  for (std::size_t i = 1; i < out.size(); ++i)
    if (out[i].wd == out[i - 1].wd) fail("fdinfo: inotify watch {} listed twice", out[i].wd);
  return out;
}

void check_inotify_watches(const Manifest& m) {
  for (auto& p : m.processes)
    for (auto& f : p.fds)
      for (auto& w : f.watches) {
        struct stat st {};
        if (::lstat(w.path.c_str(), &st) < 0)
          fail_errno("restore refused: process {} fd {}: inotify watch {} on {} is missing", p.pid,
                     f.fd, w.wd, w.path);
      }
}

namespace {

void dump_inotify(const FdDumpCtx& c, Fd& f) {
  f.path.clear();
  {
    UniqueFd mine = grab_fd(c.proc.host_pid, f.fd, c.where);
    int pending = 0;
    if (::ioctl(mine.get(), FIONREAD, &pending) < 0) fail_errno("{}: ioctl(FIONREAD)", c.where);
    if (pending > 0)
      fail(
          "{}: {} bytes of inotify events not yet read by the job: they cannot be restored; "
          "dump again once it has read them",
          c.where, pending);
  }
  f.watches = parse_inotify_fdinfo(c.fdinfo);
  for (auto& w : f.watches) w.path = path_of_watch(w, c.where);
}

long open_inotify(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  Injector& inj = c.inj();
  long fd = inj.call_ok(who + ": inotify_init1", SYS_inotify_init1,
                        static_cast<std::uint64_t>(IN_CLOEXEC | (f.flags & O_NONBLOCK)));
  if (f.watches.empty()) return fd;
  // The watches are added from here, through our own reference to the instance: many
  // syscalls when numbers have to be skipped, which need no injection.
  UniqueFd mine = grab_fd(c.host_pid(), static_cast<int>(fd), who);
  const std::string dummy = dummy_path(f, who);
  int last = 0, filled = 0;
  for (auto& w : f.watches) {
    while (last + 1 < w.wd) {
      if (++filled > kMaxFill)
        fail_unsupported("{}: inotify watch {} cannot be numbered again (too many numbers to skip)",
                         who, w.wd);
      int d = ::inotify_add_watch(mine.get(), dummy.c_str(), IN_ATTRIB);
      if (d < 0) fail_errno("{}: inotify_add_watch on {}", who, dummy);
      if (::inotify_rm_watch(mine.get(), d) < 0) fail_errno("{}: inotify_rm_watch", who);
      if (d <= last)
        fail_unsupported("{}: the kernel reused watch number {}: cannot reproduce watch {}", who, d,
                         w.wd);
      last = d;
    }
    // The path found at dump time is the watched inode itself: never follow a link.
    int got = ::inotify_add_watch(mine.get(), w.path.c_str(), w.mask | IN_DONT_FOLLOW);
    if (got < 0) fail_errno("{}: inotify_add_watch on {}", who, w.path);
    if (got != w.wd)
      fail_unsupported(
          "{}: the watch on {} got number {} instead of {}: the kernel's numbering cannot be "
          "reproduced",
          who, w.path, got, w.wd);
    last = got;
  }
  // Removing a throw-away watch queued an IN_IGNORED event for it: read them all (the
  // queue was empty before), leaving the instance's own file status flags alone.
  for (int round = 0; filled && round < 1000; ++round) {
    int pending = 0;
    if (::ioctl(mine.get(), FIONREAD, &pending) < 0) fail_errno("{}: ioctl(FIONREAD)", who);
    if (pending <= 0) break;
    std::vector<char> buf(static_cast<std::size_t>(pending));
    if (::read(mine.get(), buf.data(), buf.size()) < 0) fail_errno("{}: reading its queue", who);
  }
  return fd;
}

}  // namespace

const FdOps kInotifyFdOps{.kind = FdKind::kInotify,
                          .anon_link = "anon_inode:inotify",
                          .dump = dump_inotify,
                          .open = open_inotify,
                          .finish = nullptr,
                          .shareable = true,
                          .seekable = false};

}  // namespace fsched::ckpt
