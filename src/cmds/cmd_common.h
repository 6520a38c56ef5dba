// What the user commands (sbatch, squeue, scontrol, scancel, sinfo) share: reaching
// the controller, Slurm's way of reporting errors, and job id / user / signal parsing.
#pragma once

#include "common/text.h"

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "proto/config.h"
#include "proto/rpc.h"

namespace CLI {
class App;
}

namespace fsched::cmds {

// Reads fsched.conf from proto::config_path() ($FSCHED_CONF or /etc/fsched/fsched.conf).
// Throws fsched::Error naming the file when it cannot be read or parsed.
proto::Config load_config();

// A client to the controller named by the config (ControlAddr, else ControlMachine, on
// ControlPort), authenticating through the config's MungeSocket; timeout_s: seconds
// to wait for a reply.
proto::Client controller(const proto::Config& config, int timeout_s = 60);

// Runs a command's body, which parses the command line with `app` and does the work,
// and returns the process exit status: the body's own, 0 after --help (printed by
// CLI11), and 1 after any error, which is printed as ONE line on stderr,
// "<prog>: error: <message>", as Slurm's commands do.
int run(std::string_view prog, CLI::App& app, const std::function<int()>& body);

// Prints "<prog>: error: <message>" on stderr (for errors a command reports and goes on).
void print_error(std::string_view prog, std::string_view message);

// A job id: decimal digits, > 0. Throws fsched::Error "Invalid job id specified: TEXT".
int64_t parse_job_id(std::string_view text);

// A comma-separated list of job ids ("12,13"); empty items are skipped. Throws as
// parse_job_id, and when the list holds no id at all.
std::vector<int64_t> parse_job_ids(std::string_view list);

// Splits "a,b,,c" into {"a", "b", "c"}.
std::vector<std::string> split_list(std::string_view list, char sep = ',');

// The uid of a user given by name or as a number. Throws fsched::Error
// "Invalid user: NAME" when there is no such user.
uid_t user_id(std::string_view name_or_uid);

// The name of a uid or gid from the passwd/group database, or the number as text
// when it has none.
std::string user_name(uid_t uid);
std::string group_name(gid_t gid);

// A signal given as a number ("15"), a name ("TERM") or a name with "SIG" ("SIGTERM"),
// in any case. Returns its number; throws fsched::Error "Invalid signal: TEXT".
int parse_signal(std::string_view text);

using fsched::iequals;

}  // namespace fsched::cmds
