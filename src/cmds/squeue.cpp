// squeue: lists jobs (GET /v1/jobs), by default those pending, running or completing.
#include <algorithm>
#include <cstdlib>
#include <iostream>

#include <CLI/CLI.hpp>

#include "cmds/cmd_common.h"
#include "cmds/format.h"
#include "common/error.h"

namespace cmds = fsched::cmds;
using nlohmann::json;

int main(int argc, char** argv) {
  CLI::App app{"squeue: view information about jobs in the fsched queue", "squeue"};
  app.set_version_flag("-V,--version", "squeue (fsched) " FSCHED_VERSION);
  // -h is --noheader in Slurm, so help is only --help.
  app.set_help_flag("--help", "Print this help message and exit");
  std::vector<std::string> jobs, users, states, partitions;
  std::string format;
  bool noheader = false, as_json = false;
  app.add_option("-j,--jobs", jobs, "Comma-separated job ids (shows them in any state)");
  app.add_option("-u,--user", users, "Comma-separated user names or uids");
  app.add_option("-t,--states", states,
                 "Comma-separated states, long or short (PD,R,CG,CD,F,CA,TO,NF) or ALL");
  app.add_option("-p,--partition", partitions, "Comma-separated partitions");
  app.add_option("-o,--format", format,
                 "Output format (default: \"%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R\"; "
                 "also $SQUEUE_FORMAT)");
  app.add_flag("-h,--noheader", noheader, "Do not print the header line");
  app.add_flag("--json", as_json, "Print the jobs as the API's JSON");

  return cmds::run("squeue", app, [&] {
    app.parse(argc, argv);
    cmds::JobFilter filter;
    for (const auto& j : jobs)
      for (auto id : cmds::parse_job_ids(j)) filter.job_ids.push_back(id);
    for (const auto& u : users)
      for (const auto& name : cmds::split_list(u)) filter.uids.push_back(cmds::user_id(name));
    for (const auto& t : states)
      for (const auto& s : cmds::split_list(t)) filter.states.push_back(cmds::parse_job_state(s));
    for (const auto& p : partitions)
      for (const auto& name : cmds::split_list(p)) filter.partitions.push_back(name);
    if (format.empty()) {
      const char* env = std::getenv("SQUEUE_FORMAT");
      format = env && *env ? env : std::string(cmds::kSqueueDefaultFormat);
    }
    // Check the format before asking the controller: a typo should not need one.
    cmds::parse_squeue_format(format);

    auto config = cmds::load_config();
    // Let the controller drop what will not be shown (most of its jobs are finished
    // ones); with -j the whole list is needed to tell an unknown id from a filtered one.
    std::string path = "/v1/jobs";
    if (filter.job_ids.empty()) {
      std::vector<std::string> st = filter.states;
      if (st.empty()) st = {"PENDING", "RUNNING", "COMPLETING"};
      if (std::find(st.begin(), st.end(), "ALL") == st.end()) {
        path += "?state=";
        for (size_t i = 0; i < st.size(); ++i) path += (i ? "," : "") + st[i];
      }
    }
    json reply = cmds::controller(config).call("GET", path);
    std::vector<json> selected;
    for (const auto& job : reply.at("jobs"))
      if (cmds::job_selected(job, filter)) selected.push_back(job);
    std::sort(selected.begin(), selected.end(), [](const json& a, const json& b) {
      return a.value("job_id", int64_t{0}) < b.value("job_id", int64_t{0});
    });
    // As Slurm: asking for one job that does not exist is an error, not an empty table.
    if (filter.job_ids.size() == 1 && selected.empty()) {
      bool exists = std::any_of(
          reply.at("jobs").begin(), reply.at("jobs").end(),
          [&](const json& j) { return j.value("job_id", int64_t{0}) == filter.job_ids[0]; });
      if (!exists) fsched::fail("Invalid job id specified: {}", filter.job_ids[0]);
    }

    if (as_json)
      std::cout << json::object({{"jobs", selected}}).dump(2) << std::endl;
    else
      std::cout << cmds::squeue_table(selected, format, !noheader) << std::flush;
    return 0;
  });
}
