// cgroup v2 directories for fencing (docs/fencing-node.md): fschedd keeps every job
// it runs in a cgroup of its own below one "jobs" cgroup per node, so that it can
// freeze all of the node's jobs at once (cgroup.freeze of "jobs"), and end a run with
// every process it left behind (cgroup.kill of the run's cgroup), whatever the job did
// to its process tree (daemonized children, new sessions).
#pragma once

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <vector>

#include "common/fd.h"

namespace fsched::noded {

// Where cgroup2 is mounted, from `mounts` (the text of /proc/self/mounts): the first
// cgroup2 entry (/sys/fs/cgroup on a pure-v2 host, /sys/fs/cgroup/unified in hybrid
// mode). Throws fsched::Error (ENOENT) naming /proc/self/mounts when there is none.
std::filesystem::path cgroup2_mount(const std::string& mounts);
// This process's cgroup2 path ("0::PATH" of /proc/self/cgroup, e.g. "/" or
// "/system.slice/fschedd.service"), relative to the mount. Throws fsched::Error when
// the line is absent.
std::filesystem::path own_cgroup2(const std::string& proc_self_cgroup);

// One cgroup v2 directory, owned: the destructor removes it if it is empty (rmdir;
// a populated one stays, as the jobs in it keep running when fschedd stops).
class Cgroup {
 public:
  Cgroup() = default;
  // Creates path (its parent must exist) or takes the existing directory. Throws
  // fsched::Error with errno and the path when it can do neither, or when path is not
  // in a cgroup2 file system.
  explicit Cgroup(std::filesystem::path path);
  ~Cgroup();
  Cgroup(Cgroup&& o) noexcept;
  Cgroup& operator=(Cgroup&& o) noexcept;
  Cgroup(const Cgroup&) = delete;
  Cgroup& operator=(const Cgroup&) = delete;

  explicit operator bool() const { return !path_.empty(); }
  const std::filesystem::path& path() const { return path_; }
  // An O_DIRECTORY fd of the cgroup, for moving a child into it (spawn.h).
  int fd() const { return dir_.get(); }

  // Moves pid (0: the calling process) into this cgroup. Throws fsched::Error.
  void add(pid_t pid) const;
  // The processes in this cgroup only (not its children), from cgroup.procs.
  std::vector<pid_t> procs() const;
  // cgroup.events: whether a process is in it or below, whether it is (effectively) frozen.
  bool populated() const;
  bool frozen() const;
  // cgroup.freeze: whether this cgroup itself is set to be frozen (not an ancestor).
  bool freeze_set() const;
  // Writes cgroup.freeze (1 freezes every process below, 0 thaws). Throws fsched::Error.
  void freeze(bool on) const;
  // cgroup.kill: SIGKILL to every process below, frozen ones too. Throws fsched::Error.
  void kill() const;
  // kill(), waits up to `wait` for the processes to be gone, and removes the directory.
  // Returns false (and keeps the object) when the directory stays busy.
  bool kill_and_remove(std::chrono::milliseconds wait = std::chrono::seconds(2));
  // Removes the directory if it is empty (rmdir); false while it is busy. Kills nothing.
  bool try_remove();
  // Forgets the directory without removing it.
  void release();

 private:
  void write_file(const char* name, std::string_view text) const;
  std::string read_file(const char* name) const;

  std::filesystem::path path_;
  UniqueFd dir_;
};

// The node's "jobs" cgroup: <mount><own cgroup>/fsched-<node>/jobs, or, when this
// process may not create cgroups below its own, <mount>/fsched-<node>/jobs. The node's
// name is part of the path because the nodes of a test cluster share one host and
// one cgroup. Throws fsched::Error naming the path tried and errno when neither can be
// made (no cgroup2 at all: naming /proc/self/mounts).
Cgroup make_jobs_cgroup(const std::string& node);

// The name of a run's cgroup below "jobs": job<ID>.g<GENERATION>.
std::string run_cgroup_name(int64_t job_id, int64_t generation);

}  // namespace fsched::noded
