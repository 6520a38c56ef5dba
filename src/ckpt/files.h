// Files: the executable, the working directory and every open file descriptor of a
// process. dump_files() classifies each fd and hands it to its kind's FdOps
// (fd_ops.h); regular files, directories and basic character devices are handled
// here; fds sharing one open file description (dup, fork) are restored shared.
// Kernel interfaces: /proc/PID/fd, /proc/PID/fdinfo, /proc/PID/exe, /proc/PID/cwd
// (proc(5)), kcmp(2) KCMP_FILE, pidfd_getfd(2), openat2(2), lseek(2), ftruncate(2).
#pragma once

#include <span>
#include <string>

#include "ckpt/dump_context.h"
#include "ckpt/manifest.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

// The identity (inode, size, mtime) of a path; throws Error naming it.
FileId stat_file_id(const std::string& path);

// Dump: executable, cwd and open fds of p. `all` (the tree, p among them) lets it
// find fds that share an open file description with one recorded earlier.
void dump_files(DumpProcess& p, std::span<DumpProcess> all);

// Verifies mapped files and the executable are unchanged (inode, size, mtime) and
// that written files exist, without following links; throws Error naming the file.
// restore_files() checks again what it opens, and truncates files the job had open for
// writing back to their dump-time size through the fd it checked.
void check_files(const Manifest& m);

// Restore: cwd and every fd of p at its saved number, with its flags and offset;
// pipes, sockets, shm objects and deleted files are taken from init.
void restore_files(RestoreProcess& p, const InjectionArea& area, const PipeTable& pipes,
                   const SocketTable& sockets, const ShmTable& objects);

}  // namespace fsched::ckpt
