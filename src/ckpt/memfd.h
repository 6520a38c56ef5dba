// memfds and other shmem files (memfd_create(2), shared anonymous memory, /dev/shm): what
// a restore must give back beyond their contents — their seals (fcntl(2) F_GET_SEALS /
// F_ADD_SEALS, which belong to the inode), their name, and an open file description
// without write access where the job's came from memfd_create(2) itself, so that
// fexecve(3) of the restored memfd works (exec refuses a file someone opened for
// writing with ETXTBSY, and a reopen through /proc/self/fd is such an open; the
// description memfd_create returns is not). Used by shmem.cpp and deleted.cpp.
#pragma once

#include <string>

#include "ckpt/inject.h"
#include "ckpt/manifest.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// Whether a path (/proc/PID/maps or an fd's link, without " (deleted)") names a memfd.
bool is_memfd_path(const std::string& path);
// The name memfd_create(2) was given, from such a path ("/memfd:NAME").
std::string memfd_name(const std::string& path);

// Dump: the seals of the shmem file open as `fd` (F_GET_SEALS), or -1 if it is not a
// shmem file (no seals). Throws UnsupportedError naming `what` for a hugetlbfs file
// (MFD_HUGETLB), which the restore would make as an ordinary memfd.
int dump_seals(int fd, const std::string& what);

// Restore: a new memfd in the process behind `inj` (init), named `name`, that can take
// seals (MFD_ALLOW_SEALING) and executable (MFD_EXEC, where the kernel knows it);
// returns its fd there. Throws Error naming `what`.
long create_memfd(Injector& inj, pid_t host_pid, const InjectionArea& area, const std::string& name,
                  const std::string& what);

// Restore, on the restorer's own fd of the object: the seals `seals` (as dumped; -1:
// none recorded) in two steps. Before any process maps it: all but F_SEAL_FUTURE_WRITE
// and F_SEAL_SEAL (F_SEAL_WRITE cannot be added while a writable shared mapping exists,
// and makes the kernel map read-only shared mappings without may-write, as the job's
// were). After every mapping and fd is restored (a job may keep a writable mapping made
// before F_SEAL_FUTURE_WRITE, and no mapping could be made after F_SEAL_SEAL ... ): the
// rest, then read back. Throws Error naming `what` when the kernel refuses or differs.
void seal_before_mapping(int fd, int seals, const std::string& what);
void seal_after_mapping(int fd, int seals, const std::string& what);

// Restore: whether job fd `f` (a memfd's, own description) is the one that gets the
// object's memfd_create description itself instead of a reopen: the first description
// open for reading and writing of that memfd in restore order.
bool memfd_gets_original(const Manifest& m, const Fd& f);

}  // namespace fsched::ckpt
