// Reaching into another process: its memory and its file descriptors; see remote.h.
#include "ckpt/remote.h"

#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "ckpt/inject.h"
#include "ckpt/restore_context.h"
#include "common/error.h"

namespace fsched::ckpt {

void remote_read(pid_t pid, std::uint64_t addr, void* out, std::size_t len) {
  iovec local{out, len};
  iovec remote{reinterpret_cast<void*>(addr), len};
  ssize_t n = ::process_vm_readv(pid, &local, 1, &remote, 1, 0);
  if (n != static_cast<ssize_t>(len))
    fail_errno("cannot read {} bytes at {:#x} of process {}", len, addr, pid);
}

void remote_write(pid_t pid, std::uint64_t addr, const void* data, std::size_t len) {
  iovec local{const_cast<void*>(data), len};
  iovec remote{reinterpret_cast<void*>(addr), len};
  ssize_t n = ::process_vm_writev(pid, &local, 1, &remote, 1, 0);
  if (n != static_cast<ssize_t>(len))
    fail_errno("cannot write {} bytes at {:#x} of process {}", len, addr, pid);
}

std::uint64_t put_string(pid_t host_pid, const InjectionArea& area, std::size_t off,
                         const std::string& s) {
  if (off + s.size() + 1 > area.data_size()) fail("path too long for injection area: {}", s);
  remote_write(host_pid, area.data() + off, s.c_str(), s.size() + 1);
  return area.data() + off;
}

UniqueFd grab_fd(pid_t host_pid, int fd, const std::string& what) {
  UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, host_pid, 0)));
  if (!pidfd) fail_errno("{}: pidfd_open of process {}", what, host_pid);
  UniqueFd mine(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), fd, 0)));
  if (!mine) fail_errno("{}: pidfd_getfd of fd {} of process {}", what, fd, host_pid);
  return mine;
}

long take_fd(Injector& inj, int ns_pid, int fd, const std::string& what) {
  long pidfd =
      inj.call_ok(what + ": pidfd_open", SYS_pidfd_open, static_cast<std::uint64_t>(ns_pid), 0);
  long r = inj.call(SYS_pidfd_getfd, static_cast<std::uint64_t>(pidfd),
                    static_cast<std::uint64_t>(fd), 0);
  inj.call(SYS_close, static_cast<std::uint64_t>(pidfd));
  if (r < 0)
    throw Error(fmt::format("{}: pidfd_getfd of fd {} of process {}", what, fd, ns_pid),
                static_cast<int>(-r));
  return r;
}

}  // namespace fsched::ckpt
