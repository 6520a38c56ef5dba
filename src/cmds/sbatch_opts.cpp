#include "cmds/sbatch_opts.h"

#include <algorithm>
#include <cctype>
#include <charconv>

#include <CLI/CLI.hpp>
#include <fmt/format.h>

#include "common/error.h"
#include "proto/rpc.h"
#include "proto/timefmt.h"

extern char** environ;

namespace fsched::cmds {

namespace fs = std::filesystem;

namespace {

// CLI11's PositiveNumber would print its range as 0 to 1.8e308 in full.
const CLI::Validator kPositive(
    [](std::string& v) -> std::string {
      int n = 0;
      auto [p, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
      if (ec != std::errc() || p != v.data() + v.size() || n <= 0)
        return "must be a positive integer, not " + v;
      return "";
    },
    "N>0");

}  // namespace

void add_sbatch_options(CLI::App& app, SbatchOptions& o, bool with_help) {
  if (!with_help) app.set_help_flag();
  app.add_option("-J,--job-name", o.job_name, "Name of the job (default: the script's name)");
  app.add_option("-o,--output", o.output,
                 "File for the job's stdout (default: slurm-%j.out in the work dir); %j is the "
                 "job id, %x the job name");
  app.add_option("-e,--error", o.error, "File for the job's stderr (default: with stdout)");
  app.add_option("-D,--chdir", o.chdir, "Work directory of the job (default: the current one)");
  app.add_option("-p,--partition", o.partition, "Partition (default: the cluster's default)");
  app.add_option("-c,--cpus-per-task", o.cpus_per_task, "CPUs per task")->check(kPositive);
  app.add_option("-n,--ntasks", o.ntasks, "Number of tasks")->check(kPositive);
  app.add_option("-N,--nodes", o.nodes, "Number of nodes (only 1 is supported)");
  app.add_option("--mem", o.mem, "Memory per node, MiB or with a K/M/G/T suffix");
  app.add_option("-t,--time", o.time,
                 "Time limit: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S or UNLIMITED");
  app.add_option("--checkpoint", o.checkpoint,
                 "Checkpoint the job every interval: M, M:S, H:M:S, D-H, D-H:M or D-H:M:S");
  app.add_option("--num-retained", o.num_retained,
                 "Checkpoints of the job to keep, newest first (default: the cluster's "
                 "CRIU_MaxEpochs)")
      ->check(CLI::Range(0, 1000000));
  auto* rq = app.add_flag("--requeue", o.requeue, "Requeue the job when its node fails (default)");
  auto* norq = app.add_flag_callback(
      "--no-requeue", [&o] { o.requeue = false; }, "Never requeue the job");
  rq->excludes(norq);
  norq->excludes(rq);
  app.add_flag("-H,--hold", o.hold, "Submit the job held (release it with scontrol release)");
  app.add_flag("--parsable", o.parsable, "Print only the job id");
  app.add_option("--wrap", o.wrap, "Run this command line as the job's script (with /bin/sh)");
}

std::vector<std::string> split_words(std::string_view line) {
  std::vector<std::string> words;
  std::string cur;
  bool in_word = false;
  for (size_t i = 0; i < line.size(); ++i) {
    char c = line[i];
    if (std::isspace(static_cast<unsigned char>(c))) {
      if (in_word) words.push_back(std::move(cur));
      cur.clear();
      in_word = false;
    } else if (c == '#' && !in_word) {
      break;  // a trailing comment, as in "#SBATCH -t 10  # ten minutes"
    } else if (c == '\'') {
      size_t end = line.find('\'', i + 1);
      if (end == std::string_view::npos) fail("unterminated ' quote in: {}", line);
      cur.append(line.substr(i + 1, end - i - 1));
      in_word = true;
      i = end;
    } else if (c == '"') {
      in_word = true;
      for (++i;; ++i) {
        if (i >= line.size()) fail("unterminated \" quote in: {}", line);
        if (line[i] == '"') break;
        if (line[i] == '\\' && i + 1 < line.size() &&
            std::string_view("\"\\$`").find(line[i + 1]) != std::string_view::npos)
          ++i;
        cur.push_back(line[i]);
      }
    } else if (c == '\\' && i + 1 < line.size()) {
      cur.push_back(line[++i]);
      in_word = true;
    } else {
      cur.push_back(c);
      in_word = true;
    }
  }
  if (in_word) words.push_back(std::move(cur));
  return words;
}

std::vector<std::pair<int, std::vector<std::string>>> sbatch_directives(std::string_view script) {
  std::vector<std::pair<int, std::vector<std::string>>> out;
  int number = 0;
  while (!script.empty()) {
    size_t nl = script.find('\n');
    std::string_view line = script.substr(0, nl);
    script.remove_prefix(nl == std::string_view::npos ? script.size() : nl + 1);
    ++number;
    size_t first = line.find_first_not_of(" \t\r\f\v");
    if (first == std::string_view::npos) continue;
    line.remove_prefix(first);
    if (line.front() != '#') break;  // the first command ends the directives, as in Slurm
    constexpr std::string_view kTag = "#SBATCH";
    if (line.substr(0, kTag.size()) != kTag) continue;
    std::string_view rest = line.substr(kTag.size());
    if (!rest.empty() && !std::isspace(static_cast<unsigned char>(rest.front()))) continue;
    out.emplace_back(number, split_words(rest));
  }
  return out;
}

namespace {

// CLI11 wants the arguments last-first.
void parse_words(CLI::App& app, std::vector<std::string> words) {
  std::reverse(words.begin(), words.end());
  app.parse(words);
}

void check_script(std::string_view script, const std::string& name) {
  // The controller refuses larger ones too; here the user learns it before sending.
  if (script.size() > proto::kMaxScriptBytes)
    fail("{}: Batch script is too large: {} bytes, over the limit of {} bytes (4 MiB)", name,
         script.size(), proto::kMaxScriptBytes);
  if (script.find_first_not_of(" \t\r\n") == std::string_view::npos)
    fail("{}: Batch script is empty!", name);
  if (script.substr(0, 2) != "#!")
    fail(
        "{}: This does not look like a batch script: the first line must start with #! followed "
        "by the path to an interpreter, for instance #!/bin/sh",
        name);
  if (script.find("\r\n") != std::string_view::npos)
    fail(
        "{}: Batch script contains DOS line breaks (\\r\\n) instead of expected UNIX line breaks "
        "(\\n)",
        name);
}

}  // namespace

SbatchOptions parse_sbatch(std::span<const std::string> args,
                           const std::function<std::string(const std::string&)>& read_script) {
  // First pass: only to learn the script and its arguments. Everything after the
  // script belongs to it, even words that look like options.
  SbatchOptions cli;
  CLI::App first{"sbatch"};
  add_sbatch_options(first, cli);
  first.set_version_flag("-V,--version", "sbatch (fsched) " FSCHED_VERSION);
  first.prefix_command();
  parse_words(first, {args.begin(), args.end()});
  std::vector<std::string> rest = first.remaining();
  if (!rest.empty() && rest.front() == "--") rest.erase(rest.begin());
  if (!rest.empty() && rest.front().size() > 1 && rest.front().front() == '-')
    fail("unrecognized option '{}'", rest.front());

  std::string script_path = rest.empty() ? "" : rest.front();
  std::vector<std::string> script_args;
  if (!rest.empty()) script_args.assign(rest.begin() + 1, rest.end());
  std::string script;
  std::string name;
  if (!cli.wrap.empty()) {
    if (!rest.empty()) fail("script arguments not permitted with --wrap option");
    script = "#!/bin/sh\n# This script was created by sbatch --wrap.\n\n" + cli.wrap + "\n";
    name = "--wrap";
  } else {
    script = read_script(script_path);
    name = script_path.empty() ? "stdin" : script_path;
  }
  check_script(script, name);

  // The script's directives first, then the command line again over them, so that
  // the command line wins.
  SbatchOptions o;
  {
    CLI::App directives{"#SBATCH"};
    add_sbatch_options(directives, o, false);
    for (const auto& [line, words] : sbatch_directives(script)) {
      try {
        parse_words(directives, words);
      } catch (const CLI::ParseError& e) {
        fail("{}:{}: invalid #SBATCH line: {}", name, line, e.what());
      }
    }
  }
  CLI::App again{"sbatch"};
  add_sbatch_options(again, o);
  again.set_version_flag("-V,--version", "sbatch (fsched) " FSCHED_VERSION);
  again.prefix_command();
  parse_words(again, {args.begin(), args.end()});

  o.script_path = script_path;
  o.script_args = std::move(script_args);
  o.script = std::move(script);
  return o;
}

int64_t parse_mem_mb(std::string_view text) {
  auto bad = [&]() -> int64_t {
    fail(
        "invalid memory specification \"{}\": use a number of MiB, optionally with a K, M, G or "
        "T suffix",
        text);
  };
  size_t digits = 0;
  while (digits < text.size() && text[digits] >= '0' && text[digits] <= '9') ++digits;
  if (digits == 0 || digits > 12 || text.size() > digits + 1) return bad();
  int64_t n = 0;
  std::from_chars(text.data(), text.data() + digits, n);
  if (text.size() == digits) return n;
  switch (std::toupper(static_cast<unsigned char>(text[digits]))) {
    case 'K':
      return (n + 1023) / 1024;  // Slurm rounds up to whole MiB
    case 'M':
      return n;
    case 'G':
      return n * 1024;
    case 'T':
      return n * 1024 * 1024;
    default:
      return bad();
  }
}

nlohmann::json submit_request(const SbatchOptions& o, const fs::path& cwd,
                              const std::map<std::string, std::string>& env) {
  if (!o.nodes.empty() && o.nodes != "1" && o.nodes != "1-1")
    fail("invalid --nodes={}: fsched runs every job on a single node", o.nodes);

  fs::path work_dir = o.chdir.empty() ? cwd : (cwd / o.chdir).lexically_normal();
  auto in_work_dir = [&](const std::string& p) -> std::string {
    if (p.empty()) return "";
    return (work_dir / p).lexically_normal().string();  // an absolute p stays as it is
  };

  std::string name = o.job_name;
  if (name.empty()) {
    if (!o.wrap.empty())
      name = "wrap";
    else if (!o.script_path.empty())
      name = fs::path(o.script_path).filename().string();
    else
      name = "sbatch";
  }

  int64_t time_limit = 0;
  if (!o.time.empty()) time_limit = std::max<int64_t>(proto::parse_duration(o.time, true), 0);
  int64_t interval = o.checkpoint.empty() ? 0 : proto::parse_duration(o.checkpoint);

  nlohmann::json env_json = nlohmann::json::object();
  for (const auto& [k, v] : env) env_json[k] = v;

  return {
      {"script", o.script},
      {"argv", o.script_args},
      {"env", std::move(env_json)},
      {"name", name},
      {"work_dir", work_dir.string()},
      {"stdout", o.output.empty() ? (work_dir / "slurm-%j.out").string() : in_work_dir(o.output)},
      {"stderr", in_work_dir(o.error)},
      {"partition", o.partition},
      {"cpus_per_task", o.cpus_per_task},
      {"ntasks", o.ntasks},
      {"mem_mb", o.mem.empty() ? 0 : parse_mem_mb(o.mem)},
      {"time_limit", time_limit},
      {"checkpoint_interval", interval},
      {"num_retained", o.num_retained},
      {"requeue", o.requeue},
      {"hold", o.hold},
  };
}

std::map<std::string, std::string> current_environment() {
  std::map<std::string, std::string> env;
  for (char** e = environ; e && *e; ++e) {
    std::string_view kv(*e);
    size_t eq = kv.find('=');
    if (eq == std::string_view::npos || eq == 0) continue;
    env.emplace(std::string(kv.substr(0, eq)), std::string(kv.substr(eq + 1)));
  }
  return env;
}

}  // namespace fsched::cmds
