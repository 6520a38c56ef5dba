// fschedd: the node daemon. `fschedd -D -N NAME` stays in the foreground.
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <iostream>

#include "daemon/daemon.h"
#include "noded/node.h"
#include "noded/oplog.h"
#include "proto/config.h"

int main(int argc, char** argv) {
  // fschedd re-executes itself as the runner of an engine operation, so the
  // operation outlives a killed fschedd (src/noded/oplog.h).
  if (argc > 1 && std::string_view(argv[1]) == "--op-runner")
    return fsched::noded::op_runner_main(argc, argv);
  CLI::App app{"fschedd: the fsched node daemon (runs, checkpoints and restores jobs)"};
  bool foreground = false, verbose = false;
  std::string conf, name;
  app.set_version_flag("--version", "fschedd (fsched) " FSCHED_VERSION);
  app.add_flag("-D", foreground,
               "run in the foreground, logging to stderr unless SlurmdLogFile is set (daemonized, "
               "the default "
               "log is /var/log/fsched/fschedd-NAME.log)");
  app.add_flag("-v", verbose, "log debug messages");
  app.add_option("-f", conf,
                 "configuration file (default $FSCHED_CONF or /etc/fsched/fsched.conf)");
  app.add_option("-N", name, "this node's NodeName (default the short host name)");
  CLI11_PARSE(app, argc, argv);
  bool logging = false;
  try {
    auto cfg = fsched::proto::load_config(conf.empty() ? fsched::proto::config_path()
                                                       : std::filesystem::path(conf));
    fsched::proto::check_munge_socket(cfg);
    if (name.empty()) {
      char host[256] = {};
      ::gethostname(host, sizeof host - 1);
      name = host;
      name = name.substr(0, name.find('.'));
    }
    fsched::noded::NodeDaemon node(cfg, name);
    std::filesystem::path pid_file = cfg.slurmd_pid_file;
    if (cfg.nodes.size() > 1)
      pid_file.replace_filename(pid_file.stem().string() + "-" + name +
                                pid_file.extension().string());
    std::filesystem::path log_file = cfg.slurmd_log_file;
    if (!log_file.empty() && cfg.nodes.size() > 1)
      log_file.replace_filename(log_file.stem().string() + "-" + name +
                                log_file.extension().string());
    if (log_file.empty())
      log_file = fsched::daemon::default_log_file("fschedd-" + name, foreground);
    // Bound before daemonizing: a busy port (another fschedd) is an error on the
    // terminal and a non-zero exit, not a daemon that dies unseen.
    fsched::proto::Server server(cfg.munge_socket);
    server.bind(node.conf().addr, node.conf().port);
    fsched::daemon::daemonize(foreground, pid_file);
    fsched::daemon::setup_logging("fschedd-" + name, log_file, verbose);
    logging = true;
    for (auto& w : cfg.warnings) spdlog::warn("{}", w);
    // Forked by the main thread, which lives as long as fschedd (the guard dies with
    // the thread that forked it), after daemonizing, and before the first thread.
    node.start_guard();
    node.add_routes(server);
    fsched::daemon::stop_on_signals([&] { server.stop(); });
    node.start();
    spdlog::info("node {} listening on {}:{}", name, node.conf().addr, node.conf().port);
    server.serve();
    node.stop();
    spdlog::info("stopped; jobs keep running");
  } catch (const std::exception& e) {
    std::cerr << "fschedd: error: " << e.what() << "\n";
    // Once the daemon logs to a file, the error goes there too; before, stderr has it.
    if (logging) spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
