// The operations of each kind of file descriptor, one FdOps per FdKind, the way CRIU
// dispatches fds through its struct fdtype_ops: dump_files() classifies an fd from
// its /proc/PID/fd link and stat(2), then calls its kind's dump; restore_files()
// calls its kind's open (and finish, once all fds of the process exist). Each kind's
// operations are defined in its own unit, next to its other dump and restore code
// (files.cpp, pipes.cpp, sockets.cpp, eventfds.cpp, inotify.cpp); the table that
// indexes them by kind is in files.cpp.
#pragma once

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>

#include <string>

#include "ckpt/fd_kind.h"
#include "ckpt/manifest.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

struct DumpProcess;

// What the dumper knows of one fd when its kind's dump runs.
struct FdDumpCtx {
  const DumpProcess& proc;
  const std::string& link;    // target of /proc/PID/fd/N ("pipe:[123]", "/tmp/x (deleted)")
  const std::string& fdinfo;  // text of /proc/PID/fdinfo/N (proc(5))
  const struct stat& st;      // stat(2) of /proc/PID/fd/N; zeroed for sockets and anon inodes
  bool deleted = false;       // a regular file unlinked while open (deleted.cpp)
  const std::string& where;   // "process H (pid P in the job), fd N -> LINK", for messages
};

// What the restorer hands each kind's open: the process being restored and the
// objects init holds for it.
struct FdRestoreCtx {
  RestoreProcess& proc;
  const InjectionArea& area;
  const PipeTable& pipes;
  const SocketTable& sockets;
  const ShmTable& objects;  // shm objects and deleted files
  Injector& inj() const { return proc.leader(); }
  pid_t host_pid() const { return proc.host_pid; }
};

struct FdOps {
  FdKind kind;
  // For kinds that are anonymous inodes: their /proc/PID/fd link
  // ("anon_inode:[eventfd]"), by which the dump recognizes them; nullptr otherwise.
  const char* anon_link;
  // Dump: fills f's fields of this kind. f.fd, f.path (the link), f.flags, f.pos are
  // set. Throws Error naming ctx.where if the fd cannot be dumped.
  void (*dump)(const FdDumpCtx& ctx, Fd& f);
  // Restore: makes f's open file description in the process; returns its temporary
  // fd number there (O_CLOEXEC), which restore_files moves to f.fd. Throws
  // Error("<who>: ...").
  long (*open)(const FdRestoreCtx& ctx, const Fd& f, const std::string& who);
  // Restore, once every fd of the process exists (epoll targets name other fds);
  // nullptr if the kind needs nothing then.
  void (*finish)(const FdRestoreCtx& ctx, const Fd& f, const std::string& who);
  // May share its open file description with another fd (dup(2), fork(2)): looked
  // for with kcmp(2) at dump, taken with pidfd_getfd(2) at restore.
  bool shareable;
  // Has a file offset that restore_files sets back (lseek(2)).
  bool seekable;
};

// The operations of kind k (files.cpp).
const FdOps& fd_ops(FdKind k);

// For the kinds whose objects init holds (pipes, sockets): the process's own
// reference to init's fd `init_fd`, with f's file status flags (O_NONBLOCK,
// O_APPEND, O_DIRECT) set on it. Returns its fd number in the process. (files.cpp)
long adopt_from_init(const FdRestoreCtx& ctx, int init_fd, const Fd& f, const std::string& who);

// The file status flags fcntl(2) F_SETFL changes, restored for every fd kind.
inline constexpr int kStatusFlags = O_APPEND | O_NONBLOCK | O_ASYNC | O_DIRECT | O_NOATIME;

// Sets f.pos and f.flags (octal) from the text of /proc/PID/fdinfo/N (proc(5)).
// (files.cpp)
void parse_fdinfo(const std::string& fdinfo, Fd& f);

// The kind of an fd that is not a socket or an anonymous inode, from its stat(2) and
// /proc link: file, directory, pipe or FIFO, pty or other character device. Throws
// UnsupportedError naming `where` for any other file type. (files.cpp)
FdKind kind_by_type(const struct stat& st, const std::string& link, const std::string& where);

// Open flags that give an fd its saved status again when it is reopened by path:
// f.flags without those that act only at creation. (files.cpp)
int reopen_flags(const Fd& f);

}  // namespace fsched::ckpt
