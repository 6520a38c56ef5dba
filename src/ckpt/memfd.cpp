// memfd seals, names and open file descriptions (memfd.h).
#include "ckpt/memfd.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/mman.h>
#include <sys/statfs.h>
#include <sys/syscall.h>

#include <cerrno>
#include <cstring>

#include "ckpt/remote.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

constexpr const char* kMemfd = "/memfd:";
constexpr unsigned kMfdExec = 0x10;  // MFD_EXEC, kernel 6.3; not in glibc 2.36
constexpr int kLateSeals = F_SEAL_FUTURE_WRITE | F_SEAL_SEAL;

int get_seals(int fd, const std::string& what) {
  int s = ::fcntl(fd, F_GET_SEALS);
  if (s < 0) fail_errno("{}: F_GET_SEALS", what);
  return s;
}

void add_seals(int fd, int want, const std::string& what) {
  int have = get_seals(fd, what);
  int add = want & ~have;
  if (add == 0) return;
  if (::fcntl(fd, F_ADD_SEALS, add) < 0) fail_errno("{}: F_ADD_SEALS {:#x}", what, add);
}

}  // namespace

bool is_memfd_path(const std::string& path) { return path.rfind(kMemfd, 0) == 0; }

std::string memfd_name(const std::string& path) {
  std::string n = path.substr(std::strlen(kMemfd));
  if (n.ends_with(" (deleted)")) n.resize(n.size() - std::strlen(" (deleted)"));
  return n;
}

int dump_seals(int fd, const std::string& what) {
  struct statfs sf {};
  if (::fstatfs(fd, &sf) == 0 && static_cast<unsigned long>(sf.f_type) == HUGETLBFS_MAGIC)
    fail_unsupported("{}: a hugetlb memfd or file is not supported", what);
  int s = ::fcntl(fd, F_GET_SEALS);
  if (s >= 0) return s;
  if (errno == EINVAL) return -1;  // not a shmem file: it has no seals
  fail_errno("{}: F_GET_SEALS", what);
}

long create_memfd(Injector& inj, pid_t host_pid, const InjectionArea& area, const std::string& name,
                  const std::string& what) {
  std::uint64_t n = put_string(host_pid, area, 0, name);
  long fd = inj.call(SYS_memfd_create, n, MFD_CLOEXEC | MFD_ALLOW_SEALING | kMfdExec);
  // Before 6.3 the kernel does not know MFD_EXEC (and then every memfd is executable);
  // vm.memfd_noexec=2 refuses it (and then none is).
  if (fd == -EINVAL || fd == -EACCES)
    fd = inj.call(SYS_memfd_create, n, MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (fd < 0) throw Error(what + ": memfd_create", static_cast<int>(-fd));
  return fd;
}

void seal_before_mapping(int fd, int seals, const std::string& what) {
  if (seals < 0) return;
  add_seals(fd, seals & ~kLateSeals, what);
}

void seal_after_mapping(int fd, int seals, const std::string& what) {
  if (seals < 0) return;
  add_seals(fd, seals, what);
  if (int now = get_seals(fd, what); now != seals)
    fail("{}: seals {:#x} after restore, the image has {:#x}", what, now, seals);
}

bool memfd_gets_original(const Manifest& m, const Fd& f) {
  if (!is_memfd_path(f.path) || f.deleted_key.empty() || (f.flags & O_ACCMODE) != O_RDWR)
    return false;
  for (auto& p : m.processes)
    for (auto& g : p.fds)
      if (g.kind == FdKind::kFile && g.deleted_key == f.deleted_key && g.shared_fd < 0 &&
          (g.flags & O_ACCMODE) == O_RDWR)
        return &g == &f;
  return false;
}

}  // namespace fsched::ckpt
