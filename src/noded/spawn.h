// Running the engine's CLI (fsched-ckpt) from fschedd: a clean child (no inherited
// fds beyond stdio, default signal mask and dispositions, the given environment)
// whose output is collected, killed if it overruns its time.
#pragma once

#include <spawn.h>
#include <sys/types.h>

#include <map>
#include <string>
#include <vector>

namespace fsched::noded {

struct SpawnResult {
  int status = 0;                  // wait status (waitpid)
  bool timed_out = false;          // killed with SIGKILL after timeout_s
  std::string out, err;            // what it wrote to stdout and stderr
  int exit_code() const;           // exit code, or 128 + signal
  std::string error_line() const;  // the last non-empty line of err, for messages
};

// posix_spawn(3) of argv[0] (a path) with exactly `env`, in a session of its own, with
// an empty signal mask and default dispositions for the signals daemons catch; `fa`
// sets up its fds. Returns its PID; throws fsched::Error when it cannot be started.
pid_t spawn_clean(const std::vector<std::string>& argv,
                  const std::map<std::string, std::string>& env,
                  const posix_spawn_file_actions_t* fa);

// Like spawn_clean, but the child moves itself into the cgroup whose directory fd is
// cgroup_fd (its cgroup.procs, between clone and exec), so that it is there before it executes
// anything and everything it starts is there too. stdio: the fds that become the
// child's 0, 1 and 2; every other fd is closed. Throws fsched::Error when the clone
// or the exec fails (the exec's errno comes back through a pipe).
pid_t spawn_in_cgroup(const std::vector<std::string>& argv,
                      const std::map<std::string, std::string>& env, const int (&stdio)[3],
                      int cgroup_fd);

// argv[0] is the program's path. env: the complete environment. timeout_s <= 0:
// no limit. cgroup_fd >= 0: the child starts in that cgroup (spawn_in_cgroup).
// Throws fsched::Error when the program cannot be started (posix_spawn(3)).
SpawnResult spawn_wait(const std::vector<std::string>& argv,
                       const std::map<std::string, std::string>& env, double timeout_s,
                       int cgroup_fd = -1);

}  // namespace fsched::noded
