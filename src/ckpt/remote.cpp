// Reaching into another process: its memory and its file descriptors; see remote.h.
#include "ckpt/remote.h"

#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include <climits>
#include <cstring>
#include <future>

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

namespace {

void readv_serial(pid_t pid, std::span<const iovec> remote, std::byte* out) {
  for (std::size_t r = 0; r < remote.size(); r += std::size_t{IOV_MAX}) {
    const std::size_t cnt = std::min<std::size_t>(IOV_MAX, remote.size() - r);
    std::size_t len = 0;
    for (std::size_t j = r; j < r + cnt; ++j) len += remote[j].iov_len;
    iovec local{out, len};
    ssize_t got = ::process_vm_readv(pid, &local, 1, &remote[r], cnt, 0);
    if (got < 0)
      fail_errno("cannot read memory of process {} at {:#x}", pid,
                 reinterpret_cast<std::uint64_t>(remote[r].iov_base));
    if (got != static_cast<ssize_t>(len)) {
      // A partial read stops at the first range it could not read (process_vm_readv(2)).
      std::size_t left = static_cast<std::size_t>(got), j = r;
      while (left >= remote[j].iov_len) left -= remote[j++].iov_len;
      fail("cannot read memory of process {} at {:#x}: not mapped (or no longer)", pid,
           reinterpret_cast<std::uint64_t>(remote[j].iov_base) + left);
    }
    out += len;
  }
}

constexpr std::size_t kParallelReadBytes = 256 * 1024;

}  // namespace

void remote_readv(pid_t pid, std::span<const iovec> remote, std::byte* out) {
  std::size_t total = 0;
  for (const iovec& io : remote) total += io.iov_len;
  if (total < kParallelReadBytes || remote.size() < 2) return readv_serial(pid, remote, out);
  // Split at a range boundary near the middle.
  std::size_t split = 0, before = 0;
  while (split < remote.size() - 1 && before + remote[split].iov_len <= total / 2)
    before += remote[split++].iov_len;
  if (split == 0) before += remote[split++].iov_len;
  auto second = std::async(std::launch::async,
                           [&] { readv_serial(pid, remote.subspan(split), out + before); });
  std::exception_ptr first_failed;
  try {
    readv_serial(pid, remote.first(split), out);
  } catch (...) {
    first_failed = std::current_exception();
  }
  second.get();  // its error, or it is done with `out` before ours is thrown
  if (first_failed) std::rethrow_exception(first_failed);
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

long give_fd(Injector& inj, pid_t host_pid, const InjectionArea& area, int fd,
             const std::string& what) {
  const std::uint64_t at = area.data();
  inj.call_ok(what + ": socketpair", SYS_socketpair, AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0, at);
  int pair[2];
  remote_read(host_pid, at, pair, sizeof pair);
  struct Close {
    Injector& inj;
    int fd;
    ~Close() {
      try {
        inj.call(SYS_close, static_cast<std::uint64_t>(fd));
      } catch (...) {  // the process is lost anyway
      }
    }
  } c0{inj, pair[0]}, c1{inj, pair[1]};
  UniqueFd to = grab_fd(host_pid, pair[0], what);
  char byte = 0;
  iovec iov{&byte, 1};
  alignas(cmsghdr) char cbuf[CMSG_SPACE(sizeof(int))]{};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = cbuf;
  msg.msg_controllen = sizeof cbuf;
  cmsghdr* c = CMSG_FIRSTHDR(&msg);
  c->cmsg_level = SOL_SOCKET;
  c->cmsg_type = SCM_RIGHTS;
  c->cmsg_len = CMSG_LEN(sizeof(int));
  std::memcpy(CMSG_DATA(c), &fd, sizeof fd);
  if (::sendmsg(to.get(), &msg, MSG_NOSIGNAL) != 1) fail_errno("{}: sendmsg of fd {}", what, fd);
  // The same message header in the target: iovec at +64, its byte at +96, control at +128.
  msghdr rmsg{};
  iovec riov{reinterpret_cast<void*>(at + 96), 1};
  rmsg.msg_iov = reinterpret_cast<iovec*>(at + 64);
  rmsg.msg_iovlen = 1;
  rmsg.msg_control = reinterpret_cast<void*>(at + 128);
  rmsg.msg_controllen = sizeof cbuf;
  char zero[sizeof cbuf]{};
  remote_write(host_pid, at, &rmsg, sizeof rmsg);
  remote_write(host_pid, at + 64, &riov, sizeof riov);
  remote_write(host_pid, at + 128, zero, sizeof zero);
  inj.call_ok(what + ": recvmsg", SYS_recvmsg, static_cast<std::uint64_t>(pair[1]), at,
              MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
  char got[sizeof cbuf];
  remote_read(host_pid, at + 128, got, sizeof got);
  cmsghdr h{};
  std::memcpy(&h, got, sizeof h);
  if (h.cmsg_level != SOL_SOCKET || h.cmsg_type != SCM_RIGHTS ||
      h.cmsg_len != CMSG_LEN(sizeof(int)))
    fail("{}: the fd sent did not arrive", what);
  int there = -1;
  std::memcpy(&there, got + (CMSG_DATA(c) - reinterpret_cast<unsigned char*>(cbuf)), sizeof there);
  return there;
}

}  // namespace fsched::ckpt
