// pidfds: dump from fdinfo and /proc/PID/status; restore by an injected pidfd_open(2).
#include "ckpt/pidfd.h"

#include <fcntl.h>
#include <sys/syscall.h>
#include <sys/types.h>

#include <sstream>

#include "ckpt/dump_context.h"
#include "ckpt/proc.h"
#include "common/error.h"

namespace fsched::ckpt {

namespace {

// pidfd_open(2) flags, as fdinfo shows them in "flags:" (PIDFD_NONBLOCK is O_NONBLOCK,
// PIDFD_THREAD is O_EXCL).
constexpr int kPidfdFlags = O_NONBLOCK | O_EXCL;

void dump_pidfd(const FdDumpCtx& c, Fd& f) {
  long host = 0;
  bool found = false;
  std::istringstream in(c.fdinfo);
  std::string key;
  while (in >> key) {
    if (key == "Pid:") {
      in >> host;
      found = true;
      break;
    }
    in.ignore(1 << 20, '\n');
  }
  if (!found) throw Error(fmt::format("{}: no Pid: in the pidfd's fdinfo", c.where));
  if (host == -1)
    fail_unsupported(
        "{}: pidfd of a process that has exited and was reaped: not supported (no pidfd can "
        "be made for it again)",
        c.where);
  // Pid 0: the process is in a PID namespace the dumper does not see; otherwise it is
  // in the job if it is in the job's PID namespace (the job's init is its pid 1, and
  // nested PID namespaces are refused: namespaces.cpp).
  const auto pidns = [](long pid) {
    try {
      return read_link(fmt::format("/proc/{}/ns/pid", pid));
    } catch (const Error&) {
      return std::string();
    }
  };
  const std::string target = host > 0 ? pidns(host) : std::string();
  if (target.empty() || target != pidns(c.proc.host_pid))
    fail_unsupported("{}: pidfd of process {}, which is not in the job: not supported", c.where,
                     host);
  auto ns = parse_ints(read_status(static_cast<pid_t>(host))["NSpid"]);
  if (ns.empty()) throw Error(fmt::format("{}: no NSpid for process {}", c.where, host));
  f.pidfd_pid = static_cast<int>(ns.back());
}

long open_pidfd(const FdRestoreCtx& c, const Fd& f, const std::string& who) {
  // Every process of the job exists by now (create_tree), and this runs inside the
  // job's PID namespace, where the pid is the dumped one.
  return c.inj().call_ok(fmt::format("{}: pidfd_open({})", who, f.pidfd_pid), SYS_pidfd_open,
                         static_cast<std::uint64_t>(f.pidfd_pid),
                         static_cast<std::uint64_t>(f.flags & kPidfdFlags));
}

}  // namespace

const FdOps kPidfdFdOps{.kind = FdKind::kPidfd,
                        .anon_link = "anon_inode:[pidfd]",
                        .dump = dump_pidfd,
                        .open = open_pidfd,
                        .finish = nullptr,
                        .shareable = true,
                        .seekable = false};

}  // namespace fsched::ckpt
