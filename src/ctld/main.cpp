// fschedctld: the controller. `fschedctld -D` stays in the foreground, as
// `slurmctld -D` does; without -D it daemonizes and writes SlurmctldPidFile.
#include <CLI/CLI.hpp>
#include <spdlog/spdlog.h>

#include <malloc.h>

#include <atomic>
#include <chrono>
#include <iostream>
#include <optional>
#include <thread>

#include "ctld/controller.h"
#include "daemon/daemon.h"
#include "proto/config.h"

int main(int argc, char** argv) {
  CLI::App app{"fschedctld: the fsched controller (job queue, placement, checkpoints)"};
  bool foreground = false, verbose = false;
  std::string conf;
  app.set_version_flag("--version", "fschedctld (fsched) " FSCHED_VERSION);
  app.add_flag(
      "-D", foreground,
      "run in the foreground, logging to stderr unless SlurmctldLogFile is set (daemonized, the "
      "default log is /var/log/fsched/fschedctld.log)");
  app.add_flag("-v", verbose, "log debug messages");
  app.add_option("-f", conf,
                 "configuration file (default $FSCHED_CONF or /etc/fsched/fsched.conf)");
  CLI11_PARSE(app, argc, argv);
  // Up to 32 request threads would each get a malloc arena that keeps what it freed;
  // two arenas keep the controller's RSS near its live data.
  ::mallopt(M_ARENA_MAX, 2);
  bool logging = false;
  try {
    auto cfg = fsched::proto::load_config(conf.empty() ? fsched::proto::config_path()
                                                       : std::filesystem::path(conf));
    fsched::proto::check_munge_socket(cfg);
    // Bound before daemonizing: a busy port (another fschedctld) is an error on the
    // terminal and a non-zero exit, not a daemon that dies unseen.
    fsched::proto::Server server(cfg.munge_socket);
    server.bind(cfg.control_addr, cfg.control_port);
    // The REST API and console (RestPort), JWT-authenticated, on a server of its own.
    std::optional<fsched::proto::Server> rest;
    if (cfg.rest_port) {
      rest.emplace();
      if (!cfg.rest_tls_cert.empty()) rest->use_tls(cfg.rest_tls_cert, cfg.rest_tls_key);
      rest->bind(cfg.rest_addr, cfg.rest_port);
    }
    fsched::daemon::daemonize(foreground, cfg.ctld_pid_file);
    auto log_file = cfg.ctld_log_file.empty()
                        ? fsched::daemon::default_log_file("fschedctld", foreground)
                        : cfg.ctld_log_file;
    fsched::daemon::setup_logging("fschedctld", log_file, verbose);
    logging = true;
    for (auto& w : cfg.warnings) spdlog::warn("{}", w);
    fsched::ctld::Controller ctl(cfg);
    ctl.add_routes(server);
    if (rest) ctl.add_rest_routes(*rest);
    fsched::daemon::stop_on_signals([&] {
      server.stop();
      if (rest) rest->stop();
    });
    ctl.start();
    spdlog::info("listening on {}:{}", cfg.control_addr, cfg.control_port);
    std::thread rest_thread;
    std::atomic<bool> rest_done = false;
    if (rest) {
      spdlog::info("REST API and web console on {}://{}:{}/",
                   cfg.rest_tls_cert.empty() ? "http" : "https", cfg.rest_addr, cfg.rest_port);
      rest_thread = std::thread([&] {
        rest->serve();
        rest_done = true;
      });
    }
    server.serve();
    if (rest) {
      // stop() before the thread has begun to serve would not stop it: asked again
      // until it has.
      while (!rest_done) {
        rest->stop();
        std::this_thread::sleep_for(std::chrono::milliseconds(20));
      }
      rest_thread.join();
    }
    ctl.stop();
    spdlog::info("stopped");
  } catch (const std::exception& e) {
    std::cerr << "fschedctld: error: " << e.what() << "\n";
    // Once the daemon logs to a file, the error goes there too; before, stderr has it.
    if (logging) spdlog::error("{}", e.what());
    return 1;
  }
  return 0;
}
