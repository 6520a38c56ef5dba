// What fschedctld and fschedd share as daemons: logging, daemonizing with a pid
// file, and stopping on SIGTERM/SIGINT.
#pragma once

#include <filesystem>
#include <functional>
#include <string>

namespace fsched::daemon {

// Where a daemon logs when its configuration names no log file: in the foreground
// (-D) to stderr (returns empty); daemonized to /var/log/fsched/<name>.log, since a
// daemon's stderr is /dev/null and its log is where an administrator looks first.
std::filesystem::path default_log_file(const std::string& name, bool foreground);

// Logs to log_file (appending; its directory is created 0755 if missing) or, when it
// is empty, to stderr. name prefixes lines.
void setup_logging(const std::string& name, const std::filesystem::path& log_file, bool verbose);

// Without foreground: forks, detaches from the terminal (setsid, stdio to
// /dev/null) and returns in the child. Then writes the pid file (0644) either way.
// Throws fsched::Error naming the pid file when it cannot be written, or when the
// pid file names a live process (the daemon is already running).
void daemonize(bool foreground, const std::filesystem::path& pid_file);

// Blocks SIGTERM/SIGINT/SIGHUP in the calling thread (call before starting other
// threads) and starts a thread that calls on_stop once one arrives.
void stop_on_signals(std::function<void()> on_stop);

}  // namespace fsched::daemon
