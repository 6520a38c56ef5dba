// Internal to the engine: the dump and the restore side of each kind of kernel
// state, one source file each (pstree, memory, threads, files, signals, creds,
// timers), and the per-process context that dump.cpp and restore.cpp drive them with.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ckpt/image.h"
#include "ckpt/inject.h"
#include "ckpt/manifest.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {

class InitStash;

// ---- remote memory (process_vm_readv/writev(2)) --------------------------------
void remote_read(pid_t pid, std::uint64_t addr, void* out, std::size_t len);
void remote_write(pid_t pid, std::uint64_t addr, const void* data, std::size_t len);

// ---- dump side ----------------------------------------------------------------

// One process of the frozen tree.
struct DumpProcess {
  pid_t host_pid = 0;
  std::vector<pid_t> host_tids;   // host TIDs, thread-group leader first; none for a zombie
  bool zombie = false;
  Process rec;                    // what goes into the manifest
  // Syscall injection into the leader, with a scratch mapping of kScratchBytes.
  std::unique_ptr<Injector> inj;
  HealCode heal;                  // where injected syscalls run, in its vDSO (inject.h)
  std::uint64_t scratch = 0;
};
inline constexpr std::size_t kScratchBytes = 4 * 4096;

// A freeze that could not complete for a passing reason (a task in vfork, exiting);
// the dump thaws the job and tries again.
class FreezeBusy : public Error {
 public:
  using Error::Error;
};

// pstree.cpp: every thread of every process of the tree rooted at host PID `root`,
// seized and stopped (PTRACE_SEIZE + PTRACE_INTERRUPT, re-scanning until no task
// appears). Destruction thaws (detaches) all tasks unless kill() was called.
class FrozenTree {
 public:
  explicit FrozenTree(pid_t root);
  ~FrozenTree();
  FrozenTree(const FrozenTree&) = delete;
  FrozenTree& operator=(const FrozenTree&) = delete;

  // Processes, parents before children (breadth first, by PID).
  std::vector<DumpProcess>& processes() { return procs_; }
  // SIGKILL the job's init: the kernel kills its whole PID namespace. `killed` is
  // called once the signal is sent (the job can no longer run: its freeze is over),
  // before the tasks are reaped, which for a large job takes a while (the kernel
  // frees its memory).
  void kill(const std::function<void()>& killed = {});
  // Detaches every task, letting the job continue.
  void thaw();

 private:
  pid_t root_;
  std::vector<DumpProcess> procs_;
  bool done_ = false;
};

// Checks that host PID `pid` is the init of a job started by `fsched-ckpt run`;
// throws Error saying why not.
void check_job_root(pid_t pid);

// pstree.cpp: PIDs, parent, process group, session, exit signal.
void dump_ids(DumpProcess& p);
// Opens the injection context of p (scratch mapping in the job); undone by close_injection.
void open_injection(DumpProcess& p);
void close_injection(DumpProcess& p);

// memory.cpp, in three steps: the VMA layout, mm fields and auxv (before any
// injection, which maps a scratch area); the brk, by injection; then the contents of
// present, non-zero pages to the image's page stream, from outside the job.
// dump_pages returns the bytes of memory stored (before compression).
void dump_memory_layout(DumpProcess& p);
void dump_memory_injected(DumpProcess& p);
std::uint64_t dump_pages(DumpProcess& p, ImageWriter& img);
// threads.cpp: registers, xstate, signal mask, rseq, robust list, TID address,
// sigaltstack, name and pending signals of each thread.
void dump_threads(DumpProcess& p, std::uint64_t xstate_size);
// The NT_X86_XSTATE regset of a stopped thread (its size is the kernel's xstate size).
std::vector<std::uint8_t> read_xstate(pid_t tid);
// The identity (inode, size, mtime) of a path; throws Error naming it.
FileId stat_file_id(const std::string& path);
// files.cpp: executable, cwd and open fds. `all` lets it find fds shared between processes.
void dump_files(DumpProcess& p, std::span<DumpProcess> all);
// signals.cpp: signal handlers and the process-wide pending queue.
void dump_signals(DumpProcess& p);
// creds.cpp: uids, gids, groups, umask, personality, rlimits, dumpable.
void dump_creds(DumpProcess& p);
// timers.cpp: interval timers; refuses POSIX timers.
void dump_timers(DumpProcess& p);

// ---- restore side -------------------------------------------------------------

struct RestoreThread {
  const Thread* rec = nullptr;
  pid_t host_tid = 0;
  std::unique_ptr<Injector> inj;
};

struct RestoreProcess {
  const Manifest* image = nullptr;   // the whole image (its boot id, its other processes)
  const Process* rec = nullptr;
  pid_t host_pid = 0;
  std::vector<RestoreThread> threads;  // threads[0] is the leader
  Injector& leader() { return *threads[0].inj; }
};

// Where the restorer maps its injection area (code + data) in every process.
struct InjectionArea {
  std::uint64_t addr = 0;
  std::size_t size = 0;                 // bytes
  std::uint64_t code() const { return addr; }          // syscall; int3
  std::uint64_t data() const { return addr + 4096; }   // scratch for arguments
  std::size_t data_size() const { return size - 4096; }
};
inline constexpr std::size_t kInjectionAreaBytes = 64 * 4096;

// validate.cpp: every semantic check of a manifest that the restore would otherwise
// meet half-way (ids, parents before children, mappings, page runs, sizes, and that the
// parts' data add up to `stream_bytes`, the image's page stream); throws Error("image:
// ...") naming the part. Runs before any process is created.
void validate_manifest(const Manifest& m, std::uint64_t stream_bytes);

// pstree.cpp: creates every process of the manifest in a new PID namespace with its
// saved PID, session and process group, each a stopped, seized copy of a helper that
// holds only the injection area. Returns them in manifest order; procs[0] is init,
// a child of the calling process.
// On failure `procs` holds what was created so far, for the caller to kill.
void create_tree(const Manifest& m, InjectionArea& area, std::vector<RestoreProcess>& procs);

// shmem.cpp: shared memory objects, kept as temporary fds in init during restore
// (like pipes) until every process has mapped them. Deleted files (deleted.cpp) are
// kept in the same table: their keys ("major:minor:inode") never clash.
using ShmTable = std::map<std::string, int>;  // object key -> fd in init
bool is_shm_path(const std::string& maps_path);
// Dump: every object mapped by the tree, its data to the page stream (before pages).
void dump_shm(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img);
// Restore: creates the objects in init and fills them (reads the page stream).
ShmTable create_shm(InitStash& stash, const InjectionArea& area, const Manifest& m,
                    PageReader& pages);
int shm_fd_in_init(const ShmTable& t, const std::string& key);
// Appends the data of the first `size` bytes of file `fd` to the page stream in whole
// pages, skipping holes (SEEK_DATA/SEEK_HOLE); returns the {first page, count} runs
// stored. `buf` is the I/O buffer (a multiple of the page size).
std::vector<std::pair<std::uint64_t, std::uint64_t>> append_file_data(
    int fd, std::uint64_t size, ImageWriter& img, std::vector<std::byte>& buf,
    const std::string& what);
// The restore side: writes those runs from the page stream into `fd`.
void fill_file_data(int fd, std::uint64_t size,
                    const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs,
                    PageReader& pages, std::vector<std::byte>& buf, const std::string& what);

// deleted.cpp: regular files unlinked while open or mapped. file_key names a file
// like the shm objects' keys ("major:minor:inode" from its stat).
std::string file_key(dev_t dev, ino_t ino);
// Dump: the contents of every deleted file the tree refers to (fds and "file" VMAs
// with a deleted_key), once each, to the page stream (after the shm objects'); files
// that are also shm objects are not stored twice.
void dump_deleted_files(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img);
// Restore: each one recreated in init as an unlinked file in its old directory and
// filled; added to `table` under its key.
void create_deleted_files(InitStash& stash, const InjectionArea& area, const Manifest& m,
                          PageReader& pages, ShmTable& table);
// Verification before any process exists: the directories to recreate them in.
void check_deleted_files(const Manifest& m);
// Injects pidfd_open(2) + pidfd_getfd(2) in the target: its own fd (O_CLOEXEC) for
// the open file description behind fd `fd` of process `ns_pid` of the job.
// Throws Error("<what>: ...").
long take_fd(Injector& inj, int ns_pid, int fd, const std::string& what);
inline long take_from_init(Injector& inj, int init_fd, const std::string& what) {
  return take_fd(inj, 1, init_fd, what);
}

// memory.cpp: replaces the helper's address space with the saved one (pages from the
// page stream), moves the vDSO, sets the mm fields. Leaves the injection area.
void restore_memory(RestoreProcess& p, const InjectionArea& area, PageReader& pages,
                    const ShmTable& shm);
// Removes the injection area; the last injected syscall in the process.
void unmap_injection_area(RestoreProcess& p, const InjectionArea& area);
// threads.cpp: creates the other threads with their TIDs and sets every thread's
// registers, xstate, rseq, robust list, TID address, sigaltstack, name.
void restore_threads(RestoreProcess& p, const InjectionArea& area);
// Queues saved pending signals (after credentials, as the job itself).
void restore_pending_signals(RestoreProcess& p, const InjectionArea& area);
// files.cpp
// Our own copy of fd `fd` of host process `host_pid` (pidfd_getfd(2)), O_CLOEXEC.
UniqueFd grab_fd(pid_t host_pid, int fd, const std::string& what);

// Kernel objects shared between processes (pipes, shared memory, sockets) are created
// in init (pid 1) during restore and parked there, above init's own fds, until every
// process has taken its reference with pidfd_getfd(2); then close_all() drops them.
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

// Pipes being restored: each is created in init (pid 1) and kept there at a
// temporary fd until every process has taken its ends with pidfd_getfd(2).
struct PipeEnds {
  int read_fd = -1, write_fd = -1;  // fds in init
};
using PipeTable = std::map<std::uint64_t, PipeEnds>;  // by pipe inode
// Unix sockets being restored, likewise: socket inode -> fd in init.
using SocketTable = std::map<std::uint64_t, int>;
void restore_files(RestoreProcess& p, const InjectionArea& area, const PipeTable& pipes,
                   const SocketTable& sockets, const ShmTable& objects);
// Verifies mapped files and the executable are unchanged (inode, size, mtime) and
// that written files exist, without following links; throws Error naming the file.
// restore_files() checks again what it opens, and truncates files the job had open for
// writing back to their dump-time size through the fd it checked.
void check_files(const Manifest& m);
// eventfds.cpp: eventfd, epoll, timerfd and signalfd fds. dump_event_fd fills f from
// the fd's link ("anon_inode:[eventfd]") and fdinfo text; false if not an event fd.
bool dump_event_fd(const std::string& link, const std::string& fdinfo, Fd& f);
// Creates the object in the process; returns its (temporary) fd number there.
long create_event_fd(Injector& inj, const InjectionArea& area, pid_t host_pid, const Fd& f,
                     const std::string& who);
// Registers an epoll fd's targets; run once every other fd of the process exists.
void add_epoll_targets(Injector& inj, const InjectionArea& area, pid_t host_pid, const Fd& f,
                       const std::string& who);

// sysvshm.cpp: SysV shared memory segments of the job's IPC namespace. Dump: every
// segment (after the deleted files' data in the page stream); refuses a job that
// shares the host's IPC namespace and maps a segment, and SysV semaphores and message
// queues. Needs the layout of every process (kind "sysv" VMAs).
void dump_sysv_shm(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img);
// Restore: creates the segments with their shmids in init's (new) IPC namespace and
// fills them; the processes attach them in restore_memory.
void create_sysv_shm(const RestoreProcess& init, const Manifest& m, PageReader& pages);
// Once every process has attached its segments: removes the ones removed at dump time.
void finish_sysv_shm(const RestoreProcess& init, const Manifest& m);

// inotify.cpp: inotify instances. parse_inotify_fdinfo reads the "inotify wd:..." lines
// of an fdinfo text (proc(5)), sorted by wd; throws Error on a malformed line.
std::vector<InotifyWatch> parse_inotify_fdinfo(const std::string& fdinfo);
// Fills f for an "anon_inode:inotify" fd: its watches with the paths of the watched
// inodes (through their file handles); false if the link is not an inotify one.
bool dump_inotify_fd(const std::string& link, const std::string& fdinfo, Fd& f,
                     const std::string& where);
// Creates the instance in the process with the same watches and watch descriptors;
// returns its (temporary) fd number there.
long create_inotify_fd(Injector& inj, pid_t host_pid, const Fd& f, const std::string& who);
// Verification before restore: every watched path exists.
void check_inotify_watches(const Manifest& m);

// sockets.cpp: Unix sockets (after the pipes in the page stream).
void dump_sockets(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img);
SocketTable create_sockets(InitStash& stash, const InjectionArea& area, const Manifest& m,
                           PageReader& pages);

// pipes.cpp: the pipes of the job (manifest and buffered data, which follows the
// pages in the page stream) ...
void dump_pipes(std::span<DumpProcess> procs, Manifest& m, ImageWriter& img);
// ... created in init with their capacity and buffered data.
PipeTable create_pipes(InitStash& stash, const InjectionArea& area, const Manifest& m,
                       PageReader& pages);
// signals.cpp
void restore_signals(RestoreProcess& p, const InjectionArea& area);
// creds.cpp: umask, personality, rlimits (before credentials drop) ...
void restore_process_attrs(RestoreProcess& p, const InjectionArea& area);
// ... and credentials in every thread, then dumpable; after this the process has
// no privileges left for the remaining injected syscalls.
void restore_creds(RestoreProcess& p, const InjectionArea& area);
// timers.cpp
void restore_timers(RestoreProcess& p, const InjectionArea& area);

// Writes a NUL-terminated string into the injection area's data at offset `off`;
// returns its address in the target.
std::uint64_t put_string(pid_t host_pid, const InjectionArea& area, std::size_t off,
                         const std::string& s);

}  // namespace fsched::ckpt
