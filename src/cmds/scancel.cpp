// scancel: cancels jobs (POST /v1/jobs/ID/cancel) or signals them (/signal).
#include <iostream>

#include <CLI/CLI.hpp>

#include "cmds/cmd_common.h"
#include "common/error.h"

namespace cmds = fsched::cmds;
using nlohmann::json;

int main(int argc, char** argv) {
  CLI::App app{"scancel: cancel or signal fsched jobs", "scancel"};
  app.set_version_flag("-V,--version", "scancel (fsched) " FSCHED_VERSION);
  std::vector<std::string> ids;
  std::string signal;
  app.add_option("-s,--signal", signal,
                 "Send this signal (TERM, SIGUSR1, KILL, 9...) instead of cancelling");
  app.add_option("job_id", ids, "Job ids (also comma-separated)");

  return cmds::run("scancel", app, [&] {
    app.parse(argc, argv);
    if (ids.empty()) fsched::fail("No job identification provided");
    std::vector<int64_t> jobs;
    for (const auto& i : ids)
      for (auto id : cmds::parse_job_ids(i)) jobs.push_back(id);
    int sig = signal.empty() ? 0 : cmds::parse_signal(signal);

    auto config = cmds::load_config();
    auto client = cmds::controller(config);
    // As Slurm: an error on one job does not stop the others; the exit status says
    // whether any failed.
    int status = 0;
    for (auto id : jobs) {
      try {
        if (signal.empty())
          client.call("POST", "/v1/jobs/" + std::to_string(id) + "/cancel", json::object());
        else
          client.call("POST", "/v1/jobs/" + std::to_string(id) + "/signal", {{"signal", sig}});
      } catch (const fsched::proto::RpcError& e) {
        cmds::print_error("scancel", fmt::format("Kill job error on job id {}: {}", id, e.what()));
        status = 1;
      }
    }
    return status;
  });
}
