#include "cmds/cmd_common.h"

#include <grp.h>
#include <pwd.h>
#include <signal.h>
#include <string.h>

#include <algorithm>
#include <cctype>
#include <charconv>
#include <iostream>

#include <CLI/CLI.hpp>
#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "common/error.h"

namespace fsched::cmds {

proto::Config load_config() { return proto::load_config(proto::config_path()); }

proto::Client controller(const proto::Config& config, int timeout_s) {
  const std::string& host =
      config.control_addr.empty() ? config.control_machine : config.control_addr;
  return proto::Client(host, config.control_port, config.munge_socket, timeout_s, config.munge_ttl);
}

void print_error(std::string_view prog, std::string_view message) {
  // Slurm's messages are one line; a multi-line one (CLI11's, a server's) is folded
  // so that scripts grepping stderr see the whole reason.
  std::string m(message);
  while (!m.empty() && (m.back() == '\n' || m.back() == ' ')) m.pop_back();
  std::replace(m.begin(), m.end(), '\n', ' ');
  std::cout.flush();
  std::cerr << prog << ": error: " << m << std::endl;
}

int run(std::string_view prog, CLI::App& app, const std::function<int()>& body) {
  try {
    return body();
  } catch (const CLI::ParseError& e) {
    // --help and --version arrive as ParseErrors with exit code 0.
    if (e.get_exit_code() == 0) return app.exit(e);
    print_error(prog, e.what());
  } catch (const nlohmann::json::exception& e) {
    print_error(prog, fmt::format("malformed reply from the controller: {}", e.what()));
  } catch (const std::exception& e) {
    print_error(prog, e.what());
  }
  return 1;
}

std::vector<std::string> split_list(std::string_view list, char sep) {
  std::vector<std::string> out;
  size_t start = 0;
  while (start <= list.size()) {
    size_t end = list.find(sep, start);
    if (end == std::string_view::npos) end = list.size();
    if (end > start) out.emplace_back(list.substr(start, end - start));
    start = end + 1;
  }
  return out;
}

int64_t parse_job_id(std::string_view text) {
  int64_t id = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), id);
  // from_chars accepts a leading '-', which a job id never has.
  if (text.empty() || text.front() == '-' || ec != std::errc() || p != text.data() + text.size() ||
      id <= 0)
    fail("Invalid job id specified: {}", text);
  return id;
}

std::vector<int64_t> parse_job_ids(std::string_view list) {
  std::vector<int64_t> ids;
  for (const auto& item : split_list(list)) ids.push_back(parse_job_id(item));
  if (ids.empty()) fail("Invalid job id specified: {}", list);
  return ids;
}

uid_t user_id(std::string_view name_or_uid) {
  std::string name(name_or_uid);
  if (const passwd* pw = getpwnam(name.c_str())) return pw->pw_uid;
  uid_t uid = 0;
  auto [p, ec] = std::from_chars(name.data(), name.data() + name.size(), uid);
  if (!name.empty() && ec == std::errc() && p == name.data() + name.size()) return uid;
  fail("Invalid user: {}", name_or_uid);
}

std::string user_name(uid_t uid) {
  if (const passwd* pw = getpwuid(uid)) return pw->pw_name;
  return std::to_string(uid);
}

std::string group_name(gid_t gid) {
  if (const group* gr = getgrgid(gid)) return gr->gr_name;
  return std::to_string(gid);
}

int parse_signal(std::string_view text) {
  int num = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), num);
  if (!text.empty() && ec == std::errc() && p == text.data() + text.size()) {
    if (num >= 0 && num < NSIG) return num;
    fail("Invalid signal: {}", text);
  }
  std::string_view name = text;
  if (name.size() > 3 && iequals(name.substr(0, 3), "SIG")) name.remove_prefix(3);
  for (int sig = 1; sig < NSIG; ++sig) {
    const char* abbrev = sigabbrev_np(sig);  // "TERM", "USR1"; null for real-time ones
    if (abbrev && iequals(name, abbrev)) return sig;
  }
  fail("Invalid signal: {}", text);
}

}  // namespace fsched::cmds
