// Namespaces of a job: see namespaces.h.
#include "ckpt/namespaces.h"

#include <sys/mount.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "ckpt/proc.h"
#include "common/error.h"

namespace fsched::ckpt {

long enter_job_mount_namespace() noexcept {
  long r = ::syscall(SYS_mount, nullptr, "/", nullptr, MS_REC | MS_SLAVE, nullptr);
  if (r < 0) return -errno;
  r = ::syscall(SYS_mount, "proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, nullptr);
  if (r < 0) return -errno;
  // A devpts instance of the job's own (tty.h): its pty indexes start at 0 and no
  // other job or user of the node takes one, so a restore can make each pty again
  // with its saved index, and /dev/pts/N names the same terminal as before the dump.
  // mode=620,gid=5: what the node's udev/systemd gives, so grantpt(3) has nothing to do.
  r = ::syscall(SYS_mount, "devpts", "/dev/pts", "devpts", MS_NOSUID | MS_NOEXEC,
                "newinstance,ptmxmode=0666,mode=620,gid=5");
  if (r < 0) return -errno;
  // /dev/ptmx is the node's (a device node, or a link to pts/ptmx): opened, it would
  // still make ptys of the instance at /dev/pts, but binding the instance's own ptmx
  // over it does not depend on that.
  r = ::syscall(SYS_mount, "/dev/pts/ptmx", "/dev/ptmx", nullptr, MS_BIND, nullptr);
  if (r < 0) return -errno;
  return 0;
}

namespace {

struct NsKind {
  const char* file;  // in /proc/PID/ns
  const char* what;  // for the error
  bool of_init;      // must be the init's (else the dumper's, i.e. the node's)
};

// pid_for_children and time_for_children: a process that unshared a namespace for
// its future children has one already, even with no child yet.
constexpr NsKind kKinds[] = {
    {"pid", "PID", true},      {"pid_for_children", "PID (for its children)", true},
    {"ipc", "IPC", true},      {"mnt", "mount", true},
    {"net", "network", false}, {"uts", "UTS", false},
    {"user", "user", false},   {"cgroup", "cgroup", false},
    {"time", "time", false},   {"time_for_children", "time (for its children)", false},
};

// "net:[4026531840]", or empty when the kernel has no such namespace.
std::string ns_of(const std::string& proc) {
  try {
    return read_link(proc);
  } catch (const Error&) {
    return {};
  }
}

}  // namespace

void check_namespaces(pid_t root, const std::vector<DumpProcess>& procs) {
  for (const auto& k : kKinds) {
    std::string want = k.of_init ? ns_of(fmt::format("/proc/{}/ns/{}", root, k.file))
                                 : ns_of(fmt::format("/proc/self/ns/{}", k.file));
    if (want.empty()) continue;
    // The init's own PID namespace for children is its namespace (it never unshares).
    if (std::string_view(k.file) == "pid_for_children")
      want = ns_of(fmt::format("/proc/{}/ns/pid", root));
    for (const auto& p : procs) {
      if (p.zombie) continue;
      std::string got = ns_of(fmt::format("/proc/{}/ns/{}", p.host_pid, k.file));
      if (got.empty() || got == want) continue;
      fail_unsupported(
          "process {} (pid {} in the job) is in a {} namespace of its own ({}, the job's is {}): "
          "namespaces other than the job's PID, IPC and mount namespaces are not supported",
          p.host_pid, p.rec.pid, k.what, got, want);
    }
  }
}

}  // namespace fsched::ckpt
