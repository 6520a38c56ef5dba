// Pipes: capacity and buffered data of every pipe the job's processes hold. The data
// is read without consuming it: tee(2) from a second reader of the pipe (opened
// through /proc/PID/fd/N) into a pipe of our own. On restore each pipe is created
// with pipe2(2) inside init (pid 1), filled by the restorer through pidfd_getfd(2),
// and every process takes its ends from init. A FIFO is reopened by its path, which
// init holds open both ways so that no open waits.
#include "ckpt/pipes.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <set>

#include "ckpt/fsaccess.h"
#include "ckpt/remote.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

void write_all(int fd, const std::byte* p, std::size_t n, const std::string& what) {
  while (n) {
    ssize_t w = ::write(fd, p, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail_errno("{}", what);
    }
    p += w;
    n -= static_cast<std::size_t>(w);
  }
}

void dump_pipe(const FdDumpCtx& c, Fd& f) {
  // Opened read-write through /proc/PID/fd: restore has only a read and a write end.
  if ((f.flags & O_ACCMODE) == O_RDWR)
    fail_unsupported("{}: a pipe opened for reading and writing (through /proc) is not supported",
                     c.where);
  f.file = FileId{c.st.st_ino, 0, 0};
  f.path.clear();
}

// A named pipe: reopened by path, its buffer kept like a pipe's.
void dump_fifo(const FdDumpCtx& c, Fd& f) { f.file = FileId{c.st.st_ino, 0, 0}; }

long open_pipe(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  auto it = c.pipes.find(f.file.ino);
  if (it == c.pipes.end())
    fail_image("image: {}: pipe {} is not in the pipe table", who, f.file.ino);
  auto again = it->second.reopened.find({c.proc.rec->pid, f.fd});
  if (again != it->second.reopened.end()) return adopt_from_init(c, again->second, f, who);
  return adopt_from_init(
      c, (f.flags & O_ACCMODE) == O_RDONLY ? it->second.read_fd : it->second.write_fd, f, who);
}

long open_fifo(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  Injector& inj = c.inj();
  // A FIFO open would wait for the other side; init holds it open both ways, and
  // the fd gets its own blocking mode back right after.
  long fd =
      open_no_symlinks(inj, c.host_pid(), c.area, f.path, reopen_flags(f) | O_NONBLOCK, 0, who);
  // It may have been made anew by the restore (create_pipes): its type is what counts.
  check_identity(c.host_pid(), fd, FileId{.mode = S_IFIFO}, SizeRule::kAny, c.proc.image->boot_id,
                 who);
  if (!(f.flags & O_NONBLOCK))
    inj.call_ok(who + ": fcntl(F_SETFL)", SYS_fcntl, static_cast<std::uint64_t>(fd), F_SETFL,
                static_cast<std::uint64_t>(f.flags & O_APPEND));
  return fd;
}

}  // namespace

const FdOps kPipeFdOps{.kind = FdKind::kPipe,
                       .anon_link = nullptr,
                       .dump = dump_pipe,
                       .open = open_pipe,
                       .finish = nullptr,
                       .shareable = true,
                       .seekable = false};
const FdOps kFifoFdOps{.kind = FdKind::kFifo,
                       .anon_link = nullptr,
                       .dump = dump_fifo,
                       .open = open_fifo,
                       .finish = nullptr,
                       .shareable = true,
                       .seekable = false};

void dump_pipes(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img) {
  std::set<std::uint64_t> seen;
  for (auto& p : procs) {
    for (auto& f : p.rec.fds) {
      if ((f.kind != FdKind::kPipe && f.kind != FdKind::kFifo) || !seen.insert(f.file.ino).second)
        continue;
      std::string path = fmt::format("/proc/{}/fd/{}", p.host_pid, f.fd);
      UniqueFd src(::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC));
      if (!src) fail_errno("cannot open pipe {} for reading its buffer", path);
      int cap = ::fcntl(src.get(), F_GETPIPE_SZ);
      if (cap < 0) fail_errno("fcntl(F_GETPIPE_SZ) on {}", path);
      int fds[2];
      if (::pipe2(fds, O_CLOEXEC | O_NONBLOCK) < 0) fail_errno("pipe2");
      UniqueFd rd(fds[0]), wr(fds[1]);
      if (::fcntl(wr.get(), F_SETPIPE_SZ, cap) < cap) fail_errno("fcntl(F_SETPIPE_SZ) to {}", cap);
      ssize_t n = ::tee(src.get(), wr.get(), static_cast<std::size_t>(cap), SPLICE_F_NONBLOCK);
      if (n < 0 && errno != EAGAIN) fail_errno("tee from pipe {}", path);
      std::vector<std::byte> data(n > 0 ? static_cast<std::size_t>(n) : 0);
      for (std::size_t got = 0; got < data.size();) {
        ssize_t r = ::read(rd.get(), data.data() + got, data.size() - got);
        if (r <= 0) fail_errno("reading the copy of pipe {}", path);
        got += static_cast<std::size_t>(r);
      }
      // A second tee would show more if the buffer holds more than one tee returns.
      m.pipes.push_back({f.file.ino, static_cast<std::uint64_t>(cap), data.size(),
                         f.kind == FdKind::kFifo ? f.path : std::string()});
      if (!data.empty()) img.append_pages(data);
    }
  }
}

PipeTable create_pipes(InitStash& stash, const InjectionArea& area, const Manifest& m,
                       PageReader& pages) {
  PipeTable table;
  Injector& inj = stash.inj();
  for (auto& pp : m.pipes) {
    std::string what = fmt::format("pipe {}", pp.path.empty() ? std::to_string(pp.ino) : pp.path);
    PipeEnds e;
    if (pp.path.empty()) {
      inj.call_ok(what + ": pipe2 in init", SYS_pipe2, area.data(), O_CLOEXEC);
      int fds[2];
      remote_read(stash.init().host_pid, area.data(), fds, sizeof fds);
      e.read_fd = stash.park(fds[0], what);
      e.write_fd = stash.park(fds[1], what);
      // Each further open file description of an end (the job opened /proc/self/fd/N
      // or /dev/stdout): its own open, by init, through /proc. The first of each end is
      // the pipe2 one. (Done by init as the restorer, root: a pipe's inode is owned by
      // init, so the job's credentials might not open it.)
      bool first_read = true, first_write = true;
      for (auto& p : m.processes)
        for (auto& f : p.fds) {
          if (f.kind != FdKind::kPipe || f.file.ino != pp.ino || f.shared_fd >= 0) continue;
          const bool rd = (f.flags & O_ACCMODE) == O_RDONLY;
          bool& first = rd ? first_read : first_write;
          if (first) {
            first = false;
            continue;
          }
          std::uint64_t path =
              put_string(stash.init().host_pid, area, 0,
                         fmt::format("/proc/self/fd/{}", rd ? e.read_fd : e.write_fd));
          long fd =
              inj.call_ok(fmt::format("{}: reopening its {} end for process {} fd {}", what,
                                      rd ? "read" : "write", p.pid, f.fd),
                          SYS_openat, static_cast<std::uint64_t>(AT_FDCWD), path,
                          static_cast<std::uint64_t>((rd ? O_RDONLY : O_WRONLY) | O_CLOEXEC), 0);
          e.reopened[{p.pid, f.fd}] = stash.park(fd, what);
        }
    } else {
      // A named pipe: init holds it open for reading and writing (which never waits,
      // fifo(7)) so the processes' own opens do not wait either.
      // Made (if gone) and opened by init as the FIFO's owner in the job, never
      // through a link: the user controls the path (fsaccess.h).
      pid_t ip = stash.init().host_pid;
      act_as(inj, ip, area,
             &owner_of(
                 m, [&](const Fd& f) { return f.kind == FdKind::kFifo && f.file.ino == pp.ino; }),
             what);
      std::uint64_t path = put_string(ip, area, 0, pp.path);
      long made =
          inj.call(SYS_mknodat, static_cast<std::uint64_t>(AT_FDCWD), path, S_IFIFO | 0600, 0);
      if (made < 0 && made != -EEXIST)
        throw Error(fmt::format("{}: cannot recreate the FIFO", what), static_cast<int>(-made));
      long fd = open_no_symlinks(inj, ip, area, pp.path, O_RDWR | O_NONBLOCK, 0, what);
      check_identity(ip, fd, FileId{.mode = S_IFIFO}, SizeRule::kAny, m.boot_id, what);
      act_as(inj, ip, area, nullptr, what);
      e.read_fd = e.write_fd = stash.park(fd, what);
    }
    table[pp.ino] = e;

    UniqueFd w = stash.take(e.write_fd, what);
    if (::fcntl(w.get(), F_SETPIPE_SZ, static_cast<int>(pp.capacity)) < 0)
      fail_errno("cannot set the capacity of pipe {} to {} bytes", pp.ino, pp.capacity);
    if (pp.bytes > pp.capacity) fail_image("image: pipe {} holds more than its capacity", pp.ino);
    std::vector<std::byte> data(pp.bytes);
    pages.read(data);
    write_all(w.get(), data.data(), data.size(), fmt::format("filling pipe {}", pp.ino));
  }
  return table;
}

}  // namespace fsched::ckpt
