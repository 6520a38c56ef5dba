// SysV shared memory segments (shmget(2)) of the job's IPC namespace, restored with
// the same shmids in the restored job's new IPC namespace; the attaches themselves
// are VmaKind::kSysv mappings (memory.h). SysV semaphores and message queues are
// refused. Kernel interfaces: setns(2) CLONE_NEWIPC, shmctl(2) SHM_STAT_ANY,
// shmat(2), mincore(2), /proc/sys/kernel/shm_next_id (proc(5)).
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ckpt/dump_context.h"
#include "ckpt/image.h"
#include "ckpt/restore_context.h"

namespace fsched::ckpt {

class ParentChain;
struct PageHashing;

// An attach (shmat(2)) of a segment in the calling process, detached on destruction.
// Made in a thread that joined the segment's IPC namespace; used from any thread.
class SysvAttach {
 public:
  SysvAttach(int id, int flags, const std::string& what);
  ~SysvAttach();
  SysvAttach(const SysvAttach&) = delete;
  SysvAttach& operator=(const SysvAttach&) = delete;
  std::byte* data() const { return static_cast<std::byte*>(p_); }

 private:
  void* p_;
};

// Dump: every segment (after the deleted files' data in the page stream); refuses a
// job that shares the host's IPC namespace and maps a segment, and SysV semaphores
// and message queues. Needs the layout of every process (VmaKind::kSysv VMAs). With
// `hashing` (page_hashes.h), as dump_shm: each data page is hashed (into
// hashing->tail), and a page equal to the parent's segment with the same id and size
// goes to SysvShm::parent_runs instead of the stream.
void dump_sysv_shm(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img,
                   PageHashing* hashing = nullptr);
// The same in two steps, for a pre-dump: the segments listed and attached while the
// tree is frozen (the attach keeps a segment the job removes meanwhile), their data
// read while it runs. Meanwhile the job sees one more attach in shm_nattch (IPC_STAT),
// as it would during a dump were it not frozen.
struct SysvSource {
  SysvShm segment;  // without runs yet
  std::unique_ptr<SysvAttach> attach;
  std::string what;  // for messages
};
struct SysvSources {
  std::vector<SysvSource> segments;
  bool swapped = false;  // pages of the namespace's segments are swapped out: read them all
};
SysvSources open_sysv_shm(std::span<DumpProcess> procs);
void dump_sysv_shm_data(SysvSources& sources, Manifest& m, ImageWriter& img, PageHashing* hashing);
// Restore: creates the segments with their shmids in init's (new) IPC namespace and
// fills them, the pages of SysvShm::parent_runs from `chain`; the processes attach
// them in restore_memory.
void create_sysv_shm(const RestoreProcess& init, const Manifest& m, PageReader& pages,
                     ParentChain* chain = nullptr);
// Once every process has attached its segments: removes the ones removed at dump time.
void finish_sysv_shm(const RestoreProcess& init, const Manifest& m);

}  // namespace fsched::ckpt
