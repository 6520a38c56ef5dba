// sinfo: partitions and nodes (GET /v1/partitions and /v1/nodes).
#include <algorithm>
#include <iostream>

#include <CLI/CLI.hpp>

#include "cmds/cmd_common.h"
#include "cmds/format.h"
#include "common/error.h"

namespace cmds = fsched::cmds;
using nlohmann::json;

int main(int argc, char** argv) {
  CLI::App app{"sinfo: view information about fsched nodes and partitions", "sinfo"};
  app.set_version_flag("-V,--version", "sinfo (fsched) " FSCHED_VERSION);
  // -h is --noheader in Slurm, so help is only --help.
  app.set_help_flag("--help", "Print this help message and exit");
  bool node_oriented = false, noheader = false, as_json = false, reasons = false;
  std::vector<std::string> partitions;
  app.add_flag("-N,--Node", node_oriented, "One line per node (and partition)");
  app.add_flag("-h,--noheader", noheader, "Do not print the header line");
  app.add_option("-p,--partition", partitions, "Comma-separated partitions to show");
  app.add_flag("-R,--list-reasons", reasons,
               "List the reasons nodes are down (REASON USER TIMESTAMP NODELIST)");
  app.add_flag("--json", as_json, "Print the partitions and nodes as the API's JSON");

  return cmds::run("sinfo", app, [&] {
    app.parse(argc, argv);
    std::vector<std::string> wanted;
    for (const auto& p : partitions)
      for (const auto& name : cmds::split_list(p)) wanted.push_back(name);

    auto config = cmds::load_config();
    auto client = cmds::controller(config);
    json parts = client.call("GET", "/v1/partitions").at("partitions");
    json nodes = client.call("GET", "/v1/nodes").at("nodes");
    std::vector<json> shown;
    for (const auto& p : parts)
      if (wanted.empty() ||
          std::find(wanted.begin(), wanted.end(), p.value("name", "")) != wanted.end())
        shown.push_back(p);
    std::vector<json> node_list(nodes.begin(), nodes.end());

    if (as_json) {
      std::cout << json::object({{"partitions", shown}, {"nodes", node_list}}).dump(2) << std::endl;
      return 0;
    }
    if (reasons) {
      // Only the nodes of the partitions shown, as Slurm's -R -p does.
      std::vector<json> in_shown;
      for (const auto& n : node_list)
        if (std::any_of(shown.begin(), shown.end(), [&](const json& p) {
              auto pn = p.value("nodes", std::vector<std::string>{});
              return std::find(pn.begin(), pn.end(), n.value("name", "")) != pn.end();
            }))
          in_shown.push_back(n);
      node_list = std::move(in_shown);
    }
    std::string table = reasons         ? cmds::sinfo_reasons_table(node_list)
                        : node_oriented ? cmds::sinfo_node_table(shown, node_list)
                                        : cmds::sinfo_table(shown, node_list);
    if (noheader) table.erase(0, table.find('\n') + 1);
    std::cout << table << std::flush;
    return 0;
  });
}
