// Internal to NodeDaemon (node.cpp, node_ops.cpp, node_fencing.cpp): helpers all three use.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>

#include "noded/node.h"

namespace fsched::noded::node_detail {

// The whole file; empty if it cannot be read.
std::string read_file(const std::filesystem::path& p);
bool proc_stat(pid_t pid, char& state, unsigned long long& start_ticks);
// Whether j's init still runs: the same process (its start time, against PID reuse),
// not a zombie.
bool alive(const LocalJob& j);
double unix_now();  // seconds since the epoch, as the controller's `issued` counts them

}  // namespace fsched::noded::node_detail
