// Reaching into another process: its memory (process_vm_readv(2),
// process_vm_writev(2)) and its file descriptors (pidfd_open(2), pidfd_getfd(2)),
// either from the engine itself or, by injection, from a process of the job.
// (remote.cpp)
#pragma once

#include <sys/types.h>
#include <sys/uio.h>

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>

#include "common/fd.h"

namespace fsched::ckpt {

class Injector;
struct InjectionArea;

// Copies `len` bytes at `addr` of process `pid` to `out` / from `data`; throws Error
// naming the address and process unless all of them were copied.
void remote_read(pid_t pid, std::uint64_t addr, void* out, std::size_t len);
void remote_write(pid_t pid, std::uint64_t addr, const void* data, std::size_t len);

// Copies the ranges `remote` of process `pid`, in order, to `out`, which must hold the
// sum of their lengths (process_vm_readv(2), IOV_MAX ranges a call). Of 256 KiB or
// more, the second half is copied by a second thread meanwhile: the copy out of a
// frozen job is bound by the page pinning and copying of one core, not by memory.
// Throws Error naming the process and the first address not read.
void remote_readv(pid_t pid, std::span<const iovec> remote, std::byte* out);

// Writes a NUL-terminated string into the injection area's data at offset `off`;
// returns its address in the target. Throws Error if it does not fit.
std::uint64_t put_string(pid_t host_pid, const InjectionArea& area, std::size_t off,
                         const std::string& s);

// Our own copy of fd `fd` of host process `host_pid` (pidfd_getfd(2)), O_CLOEXEC.
// Throws Error("<what>: ...").
UniqueFd grab_fd(pid_t host_pid, int fd, const std::string& what);

// Injects pidfd_open(2) + pidfd_getfd(2) in the target: its own fd (O_CLOEXEC) for
// the open file description behind fd `fd` of process `ns_pid` of the job.
// Throws Error("<what>: ...").
long take_fd(Injector& inj, int ns_pid, int fd, const std::string& what);
inline long take_from_init(Injector& inj, int init_fd, const std::string& what) {
  return take_fd(inj, 1, init_fd, what);
}

// The other way: gives our fd `fd` to the injected process `host_pid` (SCM_RIGHTS over
// a datagram socketpair made there, recvmsg(2) injected, the pair closed after);
// returns its number there (O_CLOEXEC). Uses the first 256 bytes of the area's data.
// Throws Error("<what>: ...").
long give_fd(Injector& inj, pid_t host_pid, const InjectionArea& area, int fd,
             const std::string& what);

}  // namespace fsched::ckpt
