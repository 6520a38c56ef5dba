#include "ckpt/proc.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <charconv>
#include <cstdlib>
#include <filesystem>
#include <sstream>

#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {

std::string read_file(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) fail_errno("cannot open {}", path);
  std::string out;
  char buf[65536];
  for (;;) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      fail_errno("cannot read {}", path);
    }
    if (n == 0) break;
    out.append(buf, static_cast<std::size_t>(n));
  }
  return out;
}

std::string read_link(const std::string& path) {
  char buf[4096];
  ssize_t n = ::readlink(path.c_str(), buf, sizeof buf);
  if (n < 0) fail_errno("cannot read link {}", path);
  return std::string(buf, static_cast<std::size_t>(n));
}

std::map<std::string, std::string> read_status(pid_t pid) {
  std::map<std::string, std::string> m;
  std::istringstream in(read_file(fmt::format("/proc/{}/status", pid)));
  std::string line;
  while (std::getline(in, line)) {
    auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    auto v = line.substr(colon + 1);
    auto b = v.find_first_not_of(" \t");
    m[line.substr(0, colon)] = b == std::string::npos ? "" : v.substr(b);
  }
  return m;
}

std::vector<long long> parse_ints(const std::string& s) {
  std::vector<long long> out;
  std::istringstream in(s);
  long long v;
  while (in >> v) out.push_back(v);
  return out;
}

std::vector<std::string> read_stat(pid_t pid) {
  std::string s = read_file(fmt::format("/proc/{}/stat", pid));
  // comm may hold spaces and parentheses: it ends at the last ')'.
  auto l = s.find('('), r = s.rfind(')');
  if (l == std::string::npos || r == std::string::npos) fail("malformed /proc/{}/stat", pid);
  std::vector<std::string> f{"", s.substr(0, l - 1), s.substr(l + 1, r - l - 1)};
  std::istringstream in(s.substr(r + 2));
  std::string w;
  while (in >> w) f.push_back(w);
  return f;
}

static std::vector<pid_t> list_numeric_dir(const std::string& dir) {
  std::vector<pid_t> out;
  std::error_code ec;
  for (auto& e : std::filesystem::directory_iterator(dir, ec)) {
    auto name = e.path().filename().string();
    pid_t v = 0;
    auto [p, err] = std::from_chars(name.data(), name.data() + name.size(), v);
    if (err == std::errc() && p == name.data() + name.size()) out.push_back(v);
  }
  if (ec) throw Error(fmt::format("cannot list {}", dir), ec.value());
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<pid_t> list_tasks(pid_t pid) {
  return list_numeric_dir(fmt::format("/proc/{}/task", pid));
}

std::vector<pid_t> list_children(pid_t pid) {
  std::vector<pid_t> out;
  for (pid_t tid : list_tasks(pid)) {
    std::string s;
    try {
      s = read_file(fmt::format("/proc/{}/task/{}/children", pid, tid));
    } catch (const Error&) {
      continue;  // the thread exited meanwhile
    }
    for (auto v : parse_ints(s)) out.push_back(static_cast<pid_t>(v));
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

static bool parse_maps_line(const std::string& line, MapsEntry& e) {
  // start-end perms offset dev inode   path
  std::istringstream in(line);
  std::string range, perms, off, dev;
  std::uint64_t ino;
  if (!(in >> range >> perms >> off >> dev >> ino)) return false;
  auto dash = range.find('-');
  e.start = std::strtoull(range.substr(0, dash).c_str(), nullptr, 16);
  e.end = std::strtoull(range.substr(dash + 1).c_str(), nullptr, 16);
  e.perms = perms;
  e.pgoff = std::strtoull(off.c_str(), nullptr, 16);
  e.dev = dev;
  e.ino = ino;
  std::string rest;
  std::getline(in, rest);
  auto b = rest.find_first_not_of(' ');
  e.path = b == std::string::npos ? "" : rest.substr(b);
  return true;
}

std::vector<MapsEntry> read_maps(pid_t pid) {
  std::vector<MapsEntry> out;
  std::istringstream in(read_file(fmt::format("/proc/{}/maps", pid)));
  std::string line;
  while (std::getline(in, line)) {
    MapsEntry e;
    if (parse_maps_line(line, e)) out.push_back(std::move(e));
  }
  return out;
}

std::vector<MapsEntry> read_smaps(pid_t pid) {
  std::vector<MapsEntry> out;
  std::istringstream in(read_file(fmt::format("/proc/{}/smaps", pid)));
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    if (line.rfind("VmFlags:", 0) == 0) {
      if (out.empty()) continue;
      std::istringstream f(line.substr(8));
      std::string w;
      while (f >> w) out.back().vmflags.push_back(w);
      continue;
    }
    if (line.rfind("ProtectionKey:", 0) == 0) {
      if (!out.empty()) out.back().pkey = std::stoi(line.substr(14));
      continue;
    }
    // Header lines start with a hex address and contain '-'; field lines are "Name:  value".
    auto sp = line.find(' ');
    if (sp != std::string::npos && line[sp - 1] == ':') continue;
    MapsEntry e;
    if (parse_maps_line(line, e)) out.push_back(std::move(e));
  }
  return out;
}

}  // namespace fsched::ckpt
