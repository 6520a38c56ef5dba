// Pipes: capacity and buffered data of every pipe the job's processes hold. The data
// is read without consuming it: tee(2) from a second reader of the pipe (opened
// through /proc/PID/fd/N) into a pipe of our own. On restore each pipe is created
// with pipe2(2) inside init (pid 1), filled by the restorer through pidfd_getfd(2),
// and every process takes its ends from init (files.cpp).
#include <fcntl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <set>

#include "ckpt/parts.h"
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

}  // namespace

void dump_pipes(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img) {
  std::set<std::uint64_t> seen;
  for (auto& p : procs) {
    for (auto& f : p.rec.fds) {
      if (f.kind != "pipe" || !seen.insert(f.file.ino).second) continue;
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
      m.pipes.push_back({f.file.ino, static_cast<std::uint64_t>(cap), data.size()});
      if (!data.empty()) img.append_pages(data);
    }
  }
}

PipeTable create_pipes(RestoreProcess& init, const InjectionArea& area, const Manifest& m,
                       PageReader& pages) {
  PipeTable table;
  if (m.pipes.empty()) return table;
  Injector& inj = init.leader();
  int base = 3;
  for (auto& f : init.rec->fds) base = std::max(base, f.fd + 1);
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, init.host_pid, 0)));
  if (!pidfd) fail_errno("pidfd_open of the restored init");
  for (auto& pp : m.pipes) {
    inj.call_ok("pipe2 in init", SYS_pipe2, area.data(), O_CLOEXEC);
    int fds[2];
    remote_read(init.host_pid, area.data(), fds, sizeof fds);
    // Out of the way of the fds init will restore.
    PipeEnds e;
    e.read_fd = static_cast<int>(
        inj.call_ok("fcntl(F_DUPFD)", SYS_fcntl, static_cast<std::uint64_t>(fds[0]), F_DUPFD_CLOEXEC,
                    static_cast<std::uint64_t>(base)));
    e.write_fd = static_cast<int>(
        inj.call_ok("fcntl(F_DUPFD)", SYS_fcntl, static_cast<std::uint64_t>(fds[1]), F_DUPFD_CLOEXEC,
                    static_cast<std::uint64_t>(base)));
    inj.call(SYS_close, static_cast<std::uint64_t>(fds[0]));
    inj.call(SYS_close, static_cast<std::uint64_t>(fds[1]));
    table[pp.ino] = e;

    UniqueFd w(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), e.write_fd, 0)));
    if (!w) fail_errno("pidfd_getfd of pipe {} from init", pp.ino);
    if (::fcntl(w.get(), F_SETPIPE_SZ, static_cast<int>(pp.capacity)) < 0)
      fail_errno("cannot set the capacity of pipe {} to {} bytes", pp.ino, pp.capacity);
    if (pp.bytes > pp.capacity) fail("image: pipe {} holds more than its capacity", pp.ino);
    std::vector<std::byte> data(pp.bytes);
    pages.read(data);
    write_all(w.get(), data.data(), data.size(), fmt::format("filling pipe {}", pp.ino));
  }
  return table;
}

void close_pipe_temporaries(RestoreProcess& init, const PipeTable& pipes) {
  for (auto& [ino, e] : pipes) {
    init.leader().call(SYS_close, static_cast<std::uint64_t>(e.read_fd));
    init.leader().call(SYS_close, static_cast<std::uint64_t>(e.write_fd));
  }
}

}  // namespace fsched::ckpt
