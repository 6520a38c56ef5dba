// InitStash: the fds init holds for the other processes during a restore; see
// restore_context.h.
#include "ckpt/restore_context.h"

#include <fcntl.h>
#include <sys/syscall.h>

#include <algorithm>

#include "ckpt/remote.h"

namespace fsched::ckpt {

InitStash::InitStash(RestoreProcess& init) : init_(init) {
  for (auto& f : init.rec->fds) base_ = std::max(base_, f.fd + 1);
}

int InitStash::park(long fd, const std::string& what) {
  long high =
      inj().call_ok(what + ": fcntl(F_DUPFD) in init", SYS_fcntl, static_cast<std::uint64_t>(fd),
                    F_DUPFD_CLOEXEC, static_cast<std::uint64_t>(base_));
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

}  // namespace fsched::ckpt
