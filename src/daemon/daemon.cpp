#include "daemon/daemon.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <thread>

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include "common/error.h"

namespace fsched::daemon {

std::filesystem::path default_log_file(const std::string& name, bool foreground) {
  if (foreground) return {};
  return std::filesystem::path("/var/log/fsched") / (name + ".log");
}

void setup_logging(const std::string& name, const std::filesystem::path& log_file, bool verbose) {
  std::shared_ptr<spdlog::logger> log;
  if (log_file.empty())
    log = spdlog::stderr_logger_mt(name);
  else
    log = spdlog::basic_logger_mt(name, log_file.string());
  log->set_pattern("[%Y-%m-%dT%H:%M:%S.%e] %n %l: %v");
  log->set_level(verbose ? spdlog::level::debug : spdlog::level::info);
  log->flush_on(spdlog::level::info);
  spdlog::set_default_logger(log);
}

void daemonize(bool foreground, const std::filesystem::path& pid_file) {
  if (!pid_file.empty()) {
    std::ifstream in(pid_file);
    pid_t old = 0;
    if (in >> old && old > 0 && ::kill(old, 0) == 0 && old != ::getpid())
      fail("{} names process {}, which is running: is the daemon already started?",
           pid_file.string(), old);
  }
  if (!foreground) {
    pid_t p = ::fork();
    if (p < 0) fail_errno("fork");
    if (p > 0) ::_exit(0);
    ::setsid();
    int null = ::open("/dev/null", O_RDWR);
    if (null >= 0) {
      ::dup2(null, 0);
      ::dup2(null, 1);
      ::dup2(null, 2);
      if (null > 2) ::close(null);
    }
  }
  if (!pid_file.empty()) {
    std::error_code ec;
    std::filesystem::create_directories(pid_file.parent_path(), ec);
    std::ofstream out(pid_file, std::ios::trunc);
    if (!(out << ::getpid() << '\n')) fail_errno("cannot write pid file {}", pid_file.string());
  }
}

void stop_on_signals(std::function<void()> on_stop) {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  // A broken client connection must not kill a daemon.
  ::signal(SIGPIPE, SIG_IGN);
  std::thread([set, on_stop = std::move(on_stop)] {
    int sig = 0;
    sigwait(&set, &sig);
    spdlog::info("signal {} received: stopping", sig);
    on_stop();
  }).detach();
}

}  // namespace fsched::daemon
