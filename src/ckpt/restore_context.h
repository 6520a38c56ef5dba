// The restore's view of each process being built (RestoreProcess: the helper that
// becomes it, one injector per thread) and of the injection area every helper maps,
// and the objects init holds for the others while they are restored (InitStash and
// the tables of pipes, sockets and shared memory objects parked in init).
// Kernel interfaces: syscall injection (inject.h); pidfd_open(2) and pidfd_getfd(2)
// for fds parked in init; fcntl(2) F_DUPFD_CLOEXEC.
#pragma once

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/inject.h"
#include "ckpt/manifest.h"
#include "common/fd.h"

namespace fsched::ckpt {

struct RestoreThread {
  const Thread* rec = nullptr;
  pid_t host_tid = 0;
  std::unique_ptr<Injector> inj;
};

struct RestoreProcess {
  const Manifest* image = nullptr;  // the whole image (its boot id, its other processes)
  const Process* rec = nullptr;
  pid_t host_pid = 0;
  std::vector<RestoreThread> threads;  // threads[0] is the leader
  Injector& leader() { return *threads[0].inj; }
};

// Where the restorer maps its injection area (code + data) in every process.
struct InjectionArea {
  std::uint64_t addr = 0;
  std::size_t size = 0;                               // bytes
  std::uint64_t code() const { return addr; }         // syscall; int3
  std::uint64_t data() const { return addr + 4096; }  // scratch for arguments
  std::size_t data_size() const { return size - 4096; }
};
inline constexpr std::size_t kInjectionAreaBytes = 64 * 4096;

// Kernel objects shared between processes (pipes, shared memory, sockets) are created
// in init (pid 1) during restore and parked there, above init's own fds, until every
// process has taken its reference with pidfd_getfd(2); then close_all() drops them.
// (restore_context.cpp)
class InitStash {
 public:
  explicit InitStash(RestoreProcess& init);
  // Moves init's fd `fd` out of the way; returns its new number in init.
  int park(long fd, const std::string& what);
  // The restorer's own reference to init's fd `init_fd`, e.g. to fill a pipe.
  UniqueFd take(int init_fd, const std::string& what) const;
  void close_all();
  Injector& inj() { return init_.leader(); }
  RestoreProcess& init() { return init_; }

 private:
  RestoreProcess& init_;
  int base_ = 3;
  std::vector<int> parked_;
};

// What init holds, by kind: shared memory objects and deleted files (shmem.cpp,
// deleted.cpp; their keys, "major:minor:inode", never clash) ...
using ShmTable = std::map<std::string, int>;  // object key -> fd in init
// ... pipes and FIFOs (pipes.cpp) ...
struct PipeEnds {
  int read_fd = -1, write_fd = -1;  // fds in init
  // Further opens of an end (through /proc/PID/fd, as "/dev/stdout" does), each its own
  // open file description: {job pid, fd} of the Fd -> fd in init. (pipes.cpp)
  std::map<std::pair<int, int>, int> reopened;
};
using PipeTable = std::map<std::uint64_t, PipeEnds>;  // by pipe inode
// ... and Unix sockets (sockets_restore.cpp): socket inode -> fd in init.
using SocketTable = std::map<std::uint64_t, int>;

}  // namespace fsched::ckpt
