// sbatch: submits a batch script to the controller (POST /v1/jobs).
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>

#include <CLI/CLI.hpp>

#include "cmds/cmd_common.h"
#include "cmds/sbatch_opts.h"
#include "common/error.h"

namespace cmds = fsched::cmds;

namespace {

std::string read_script(const std::string& path) {
  if (path.empty()) {
    // Slurm reads the script from stdin when none is named; say so rather than
    // sit silently waiting on a terminal.
    if (::isatty(STDIN_FILENO))
      std::cerr << "sbatch: reading the batch script from standard input" << std::endl;
    return {std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>()};
  }
  std::ifstream f(path, std::ios::binary);
  if (!f) fsched::fail_errno("Unable to open file {}", path);
  std::ostringstream s;
  s << f.rdbuf();
  if (f.bad()) fsched::fail_errno("Unable to read file {}", path);
  return s.str();
}

}  // namespace

int main(int argc, char** argv) {
  // This app only prints --help: parse_sbatch does the parsing, since the options
  // come from both the command line and the script.
  cmds::SbatchOptions help_only;
  CLI::App app{"sbatch: submit a batch script to fsched", "sbatch"};
  app.footer(
      "Arguments: [script [args...]]: the batch script (read from stdin when absent) and its "
      "arguments. #SBATCH lines at the top of the script give more options; the command "
      "line wins over them.");
  cmds::add_sbatch_options(app, help_only);
  app.set_version_flag("-V,--version", "sbatch (fsched) " FSCHED_VERSION);
  app.prefix_command();
  return cmds::run("sbatch", app, [&] {
    // --help makes parse_sbatch throw CallForHelp, which run() answers with app's help.
    std::vector<std::string> args(argv + 1, argv + argc);
    cmds::SbatchOptions o = cmds::parse_sbatch(args, read_script);
    auto request =
        cmds::submit_request(o, std::filesystem::current_path(), cmds::current_environment());
    auto config = cmds::load_config();
    auto reply = cmds::controller(config).call("POST", "/v1/jobs", request);
    int64_t id = reply.at("job_id").get<int64_t>();
    for (const auto& w : reply.value("warnings", nlohmann::json::array()))
      if (w.is_string()) std::cerr << "sbatch: warning: " << w.get<std::string>() << std::endl;
    if (o.parsable)
      std::cout << id << std::endl;
    else
      std::cout << "Submitted batch job " << id << std::endl;
    return 0;
  });
}
