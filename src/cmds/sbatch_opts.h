// sbatch's options: the command line, the #SBATCH lines of the script, and the
// submit request (docs/scheduler.md) they make.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace CLI {
class App;
}

namespace fsched::cmds {

// The options as written, before defaults and units are applied: durations and
// memory stay text so that an error can quote them.
struct SbatchOptions {
  std::string job_name;    // -J/--job-name; "" = the script's basename
  std::string output;      // -o/--output; "" = slurm-%j.out
  std::string error;       // -e/--error; "" = with stdout
  std::string chdir;       // -D/--chdir; "" = the current directory
  std::string partition;   // -p/--partition; "" = the default partition
  std::string mem;         // --mem: number with an optional K/M/G/T suffix (MiB)
  std::string time;        // -t/--time: a Slurm duration or UNLIMITED
  std::string checkpoint;  // --checkpoint: a Slurm duration
  std::string nodes;       // -N/--nodes: only 1 is supported
  std::string wrap;        // --wrap: a command to run as "#!/bin/sh\n<wrap>"
  int cpus_per_task = 1;   // -c/--cpus-per-task
  int ntasks = 1;          // -n/--ntasks
  int num_retained = 0;    // --num-retained: checkpoints kept, 0 = CRIU_MaxEpochs
  bool requeue = true;     // --requeue / --no-requeue
  bool hold = false;       // -H/--hold
  bool parsable = false;   // --parsable

  std::string script_path;               // "" = read from stdin (or --wrap)
  std::vector<std::string> script_args;  // words after the script
  std::string script;                    // the script's text
};

// Adds sbatch's options to app, binding them to o. with_help: whether --help exists
// (not inside a script's #SBATCH lines).
void add_sbatch_options(CLI::App& app, SbatchOptions& o, bool with_help = true);

// Splits a line into words as a shell does for simple quoting: blanks separate
// words, '...' is literal, "..." allows \" \\ \$ \`, a backslash outside quotes
// escapes the next character, and an unquoted word starting with '#' ends the line.
// Throws fsched::Error on an unterminated quote.
std::vector<std::string> split_words(std::string_view line);

// The #SBATCH lines at the top of a script: read until the first line that is
// neither blank nor a comment, as Slurm does. Returns each directive's words with
// its 1-based line number.
std::vector<std::pair<int, std::vector<std::string>>> sbatch_directives(std::string_view script);

// Parses sbatch's arguments (without argv[0]). read_script(path) returns the
// script's text, path "" meaning stdin; it is not called with --wrap. Options on
// the command line win over the script's #SBATCH ones. Throws CLI::ParseError for
// --help or a bad command line, and fsched::Error ("SCRIPT:LINE: ...") for a bad
// #SBATCH line or a script that is empty or lacks "#!".
SbatchOptions parse_sbatch(std::span<const std::string> args,
                           const std::function<std::string(const std::string&)>& read_script);

// --mem's value in MiB: "100" (MiB), "512K" (rounded up), "4G", "1T"; any case.
// Throws fsched::Error naming the text.
int64_t parse_mem_mb(std::string_view text);

// The submit request of docs/scheduler.md. cwd: the directory sbatch runs in
// (absolute); env: the environment to send. Applies the defaults (job name, output
// in the work dir), makes -D/-o/-e absolute, and converts the durations (-t
// UNLIMITED -> 0). Throws fsched::Error on a malformed value.
nlohmann::json submit_request(const SbatchOptions& o, const std::filesystem::path& cwd,
                              const std::map<std::string, std::string>& env);

// The process environment as a map.
std::map<std::string, std::string> current_environment();

}  // namespace fsched::cmds
