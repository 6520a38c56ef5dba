// Readers for /proc/PID files (proc(5)).
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace fsched::ckpt {

// Whole contents of a (proc) file. Throws Error naming the path.
std::string read_file(const std::string& path);
// Target of a symlink such as /proc/PID/exe. Throws Error naming the path.
std::string read_link(const std::string& path);

// "Key:\tvalue" lines of /proc/PID/status.
std::map<std::string, std::string> read_status(pid_t pid);
// Whitespace-separated integers of a status value ("1000\t1000\t1000\t1000").
std::vector<long long> parse_ints(const std::string& s);

// Fields of /proc/PID/stat, numbered as in proc(5) (1 = pid, 2 = comm, 3 = state...).
std::vector<std::string> read_stat(pid_t pid);

// Thread IDs in /proc/PID/task, ascending.
std::vector<pid_t> list_tasks(pid_t pid);
// Children of all threads of pid (/proc/PID/task/TID/children).
std::vector<pid_t> list_children(pid_t pid);

struct MapsEntry {
  std::uint64_t start = 0, end = 0;
  std::string perms;  // "rw-p"
  std::uint64_t pgoff = 0;
  std::uint64_t ino = 0;
  std::string dev;                   // "fd:01"
  std::string path;                  // may be empty, "[heap]", "/usr/lib/... (deleted)"
  std::vector<std::string> vmflags;  // from smaps
  int pkey = 0;                      // smaps "ProtectionKey" (CPUs with PKU only)
};
// /proc/PID/smaps: every VMA with its VmFlags.
std::vector<MapsEntry> read_smaps(pid_t pid);
// /proc/PID/maps only (cheaper; no VmFlags).
std::vector<MapsEntry> read_maps(pid_t pid);

}  // namespace fsched::ckpt
