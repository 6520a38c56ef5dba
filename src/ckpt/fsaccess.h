// File-system access of a restore on the job's behalf. A restore runs as root, but
// between dump and restore the job's user controls their files: every path-based
// action of a restore (open, truncate, chdir, mmap, bind, mkfifo, /dev/shm) runs in a
// process of the job with that process's file-system credentials (setfsuid(2),
// setfsgid(2), setgroups(2)), resolves its path with openat2(2) RESOLVE_NO_SYMLINKS
// (paths in the image come from /proc links and maps, which name no symlink, so a
// link found at restore time was planted after the dump), and checks the identity of
// what it opened against the dump (fstat(2) through pidfd_getfd(2)).
#pragma once

#include <sys/stat.h>
#include <sys/types.h>

#include <functional>
#include <string>

#include "ckpt/manifest.h"

namespace fsched::ckpt {

class Injector;
struct InjectionArea;

// The identity of a file from its stat: inode, device, type and mode, owner, size
// (bytes) and mtime (ns).
FileId file_id_of(const struct stat& st);

// This machine's boot id (/proc/sys/kernel/random/boot_id): device numbers compare
// only within one boot of one host.
const std::string& boot_id();

// Gives the thread behind `inj` (host PID `host_pid`) the file-system credentials of
// process `as` from the image: its supplementary groups, fsgid and fsuid. A root
// thread that takes a non-zero fsuid loses CAP_DAC_OVERRIDE and the other file
// capabilities (capabilities(7)), so the kernel checks its path accesses as the job's.
// as == nullptr gives back root's (fsuid 0, fsgid 0, no groups). Throws Error naming
// `who` when a call fails or the kernel did not take the ids.
void act_as(Injector& inj, pid_t host_pid, const InjectionArea& area, const Process* as,
            const std::string& who);

// The process whose credentials create an object that init holds for the job (a FIFO,
// a listening socket, a /dev/shm object, a deleted file): the first live process that
// has an fd for which `fd_holds` or a mapping for which `vma_holds` is true; init if none.
const Process& owner_of(const Manifest& m, const std::function<bool(const Fd&)>& fd_holds,
                        const std::function<bool(const Vma&)>& vma_holds = {});

// openat(2) of `path` in the target through openat2(2) with RESOLVE_NO_SYMLINKS (a
// trailing link is refused too), with the target's credentials. Returns the fd in the target;
// throws Error("<who>: ...") naming the path, saying so when a symlink was met (ELOOP).
long open_no_symlinks(Injector& inj, pid_t host_pid, const InjectionArea& area,
                      const std::string& path, int flags, unsigned mode, const std::string& who);

// What an identity check demands besides the file's type and owner: for kAtLeast and
// kSame also its inode (and device, within the boot that dumped it).
enum class SizeRule {
  kAny,      // a file the job only reads through an fd, or a directory: may be a copy
  kAtLeast,  // a file the job wrote: truncated back to the dump's size afterwards
  kSame,     // mapped files and executables: size and mtime unchanged
};

// fstat(2)s fd `fd` of host process `host_pid` and compares it with `want` (fields
// left 0 are not compared: old images, FIFOs recreated by the restore). `dump_boot` is the
// manifest's boot id. Throws Error("restore refused: <who>: ...") naming what differs.
void check_identity(pid_t host_pid, long fd, const FileId& want, SizeRule rule,
                    const std::string& dump_boot, const std::string& who);

// fstat(2) of fd `fd` of host process `host_pid`, through pidfd_getfd(2); throws Error
// naming `who`.
struct stat stat_of_fd(pid_t host_pid, long fd, const std::string& who);

// Gives fd `fd` of the thread behind `inj` (acting as the job) the owner uid:gid --
// fchown(2) only when it differs, so the kernel refuses what the job could not do --
// then mode `mode` (after the owner: fchown clears set-user-ID bits).
void set_owner_and_mode(Injector& inj, pid_t host_pid, long fd, unsigned uid, unsigned gid,
                        unsigned mode, const std::string& who);

// The restorer's own look at `path` before any process exists: stat through an
// O_PATH openat2(2) with RESOLVE_NO_SYMLINKS, so an error names a planted link and
// never describes what it points to. Returns false with errno set on failure.
bool probe_path(const std::string& path, struct stat& st);

}  // namespace fsched::ckpt
