// Shared memory objects mapped MAP_SHARED that live only in memory: shared anonymous
// mappings, memfds, and files in /dev/shm (POSIX shm_open(3), sem_open(3)). Stored
// once however many processes map them, recreated in init and kept there (ShmTable)
// until every process has mapped them. Also the page-stream helpers for file data
// that deleted.cpp shares. Kernel interfaces: /proc/PID/map_files (proc(5)),
// lseek(2) SEEK_DATA/SEEK_HOLE, memfd_create(2), openat2(2) in /dev/shm.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "ckpt/dump_context.h"
#include "ckpt/image.h"
#include "ckpt/restore_context.h"
#include "common/fd.h"

namespace fsched::ckpt {

class ParentChain;
struct PageHashing;

// Whether a mapping's path (/proc/PID/maps) names a shared memory object.
bool is_shm_path(const std::string& maps_path);
// Dump: every object mapped by the tree, its data to the page stream (before pages).
// With `hashing` (page_hashes.h), each data page is hashed, and with a parent to
// compare with, a page equal to the parent's goes to ShmObject::parent_runs instead.
void dump_shm(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img,
              PageHashing* hashing = nullptr);
// The same in two steps, for a pre-dump: the objects opened while the tree is frozen
// (their mappings may be gone later), their data read while it runs.
struct ShmSource {
  ShmObject object;  // without runs yet
  UniqueFd fd;       // through /proc/PID/map_files
  std::string what;  // that path, for messages
};
std::vector<ShmSource> open_shm(std::span<DumpProcess> procs);
void dump_shm_data(std::vector<ShmSource>& sources, Manifest& m, ImageWriter& img,
                   PageHashing* hashing);
// Restore: creates the objects in init and fills them (reads the page stream), the
// pages of an incremental image's ShmObject::parent_runs from `chain`.
ShmTable create_shm(InitStash& stash, const InjectionArea& area, const Manifest& m,
                    PageReader& pages, ParentChain* chain = nullptr);
// Restore, once every process has mapped and opened them (before the stash is closed):
// the seals that must wait for that, on shm objects and deleted files (memfd.h).
void seal_shm_objects(InitStash& stash, const Manifest& m, const ShmTable& table);
// The fd in init of the object with key `key`; throws Error("image: ...") if none.
int shm_fd_in_init(const ShmTable& t, const std::string& key);

// Appends the data of the first `size` bytes of file `fd` to the page stream in whole
// pages, skipping holes (SEEK_DATA/SEEK_HOLE); returns the {first page, count} runs
// stored. `buf` is the I/O buffer (a multiple of the page size).
std::vector<std::pair<std::uint64_t, std::uint64_t>> append_file_data(int fd, std::uint64_t size,
                                                                      ImageWriter& img,
                                                                      std::vector<std::byte>& buf,
                                                                      const std::string& what);
// The same with hashes (page_hashes.h): of the data pages of the object or file `key`,
// those whose hash equals the parent's at the same page (hashing.parent) go to
// `parent_runs`, the others to the page stream and `runs`; every page's hash is
// appended to hashing.out, in page order.
void append_file_data_hashed(int fd, const std::string& key, std::uint64_t size,
                             std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs,
                             PageRuns& parent_runs, ImageWriter& img, std::vector<std::byte>& buf,
                             PageHashing& hashing, const std::string& what);
// The data of `o` (a ShmObject or a DeletedFile, open as `fd`) to the page stream:
// with `hashing`, compared with the parent by hash (append_file_data_hashed; o.track
// becomes kHash), else whole (append_file_data).
template <typename Object>
void append_object_data(Object& o, int fd, ImageWriter& img, std::vector<std::byte>& buf,
                        PageHashing* hashing, const std::string& what) {
  if (hashing) {
    o.track = TrackMethod::kHash;
    append_file_data_hashed(fd, o.key, o.size, o.runs, o.parent_runs, img, buf, *hashing, what);
  } else {
    o.runs = append_file_data(fd, o.size, img, buf, what);
  }
}
// The restore side: writes those runs from the page stream into `fd`.
void fill_file_data(int fd, std::uint64_t size,
                    const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs,
                    PageReader& pages, std::vector<std::byte>& buf, const std::string& what);

}  // namespace fsched::ckpt
