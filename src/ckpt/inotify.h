// inotify(7) instances and their watches (watch descriptor, watched inode, event
// mask); the inotify fd kind (FdOps). Queued events are not kept. Kernel interfaces:
// /proc/PID/fdinfo (proc(5)) "inotify wd:..." lines with file handles,
// open_by_handle_at(2), inotify_init1(2), inotify_add_watch(2), inotify_rm_watch(2).
#pragma once

#include <string>
#include <vector>

#include "ckpt/fd_ops.h"
#include "ckpt/manifest.h"

namespace fsched::ckpt {

// The "inotify wd:..." lines of an fdinfo text, sorted by wd; throws Error on a
// malformed line.
std::vector<InotifyWatch> parse_inotify_fdinfo(const std::string& fdinfo);
// Verification before restore: every watched path exists; throws Error naming it.
void check_inotify_watches(const Manifest& m);

// FdKind::kInotify.
extern const FdOps kInotifyFdOps;

}  // namespace fsched::ckpt
