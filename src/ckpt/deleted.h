// Deleted files: regular files the job holds open or mapped after they were unlinked,
// and memfds held only as fds. Their contents go into the image; on restore each is
// recreated as an unlinked file in its old directory and kept in init (in the
// ShmTable, under its key) for the fds and mappings that refer to it. Kernel
// interfaces: /proc/PID/fd and /proc/PID/map_files (proc(5)), open(2) O_TMPFILE,
// lseek(2) SEEK_DATA/SEEK_HOLE.
#pragma once

#include <sys/types.h>

#include <set>
#include <span>
#include <string>
#include <vector>

#include "ckpt/dump_context.h"
#include "ckpt/image.h"
#include "ckpt/restore_context.h"
#include "common/fd.h"

namespace fsched::ckpt {

class ParentChain;
struct PageHashing;

// The key naming a file like the shm objects' keys ("major:minor:inode" from its stat).
std::string file_key(dev_t dev, ino_t ino);
// Dump: the contents of every deleted file the tree refers to (fds and "file" VMAs
// with a deleted_key), once each, to the page stream (after the shm objects'); files
// that are also shm objects are not stored twice. With `hashing` (page_hashes.h), as
// dump_shm: a page equal to the parent's goes to DeletedFile::parent_runs.
void dump_deleted_files(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img,
                        PageHashing* hashing = nullptr);
// The same in two steps, for a pre-dump (as open_shm, dump_shm_data): the files opened
// while the tree is frozen (the job may close them later), their data read and hashed
// while it runs. Files whose key is in `skip` (stored as shm objects) are left out.
// With `scan_fds` the processes' fds are listed from /proc/PID/fd (a pre-dump, where
// DumpProcess::rec.fds is not filled); otherwise rec.fds names them.
struct DeletedSource {
  DeletedFile file;  // without runs yet
  UniqueFd fd;       // through /proc/PID/fd or /proc/PID/map_files
  std::string what;  // that path and where the file was, for messages
};
std::vector<DeletedSource> open_deleted_files(std::span<DumpProcess> procs,
                                              const std::set<std::string>& skip, bool scan_fds);
void dump_deleted_files_data(std::vector<DeletedSource>& sources, Manifest& m, ImageWriter& img,
                             PageHashing* hashing);
// Verification before any process exists: the directories to recreate them in.
void check_deleted_files(const Manifest& m);
// Restore: each one recreated in init as an unlinked file in its old directory and
// filled (DeletedFile::parent_runs from `chain`); added to `table` under its key.
void create_deleted_files(InitStash& stash, const InjectionArea& area, const Manifest& m,
                          PageReader& pages, ShmTable& table, ParentChain* chain = nullptr);

}  // namespace fsched::ckpt
