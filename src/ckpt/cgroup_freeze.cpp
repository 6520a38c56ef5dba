// The cgroup v2 freezer of a job's own cgroup (cgroup_freeze.h).
#include "ckpt/cgroup_freeze.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

#include "ckpt/dump_context.h"
#include "ckpt/proc.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

namespace fs = std::filesystem;

// The host pid of `pid`'s parent ("PPid:" of /proc/PID/status); 0 if unknown.
pid_t parent_of(pid_t pid) {
  try {
    const auto ids = parse_ints(read_status(pid)["PPid"]);
    return ids.empty() ? 0 : static_cast<pid_t>(ids[0]);
  } catch (const Error&) {
    return 0;
  }
}

// `rel` (a cgroup path, "/a/b") opened below the directory `base` without following a
// link or leaving it (openat2(2) RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS).
UniqueFd open_beneath(const std::string& base, const std::string& rel, int flags) {
  UniqueFd dir(::open(base.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
  if (!dir) return {};
  open_how how{};
  how.flags = static_cast<std::uint64_t>(flags | O_CLOEXEC | O_NOFOLLOW);
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  std::string r = rel;
  while (!r.empty() && r.front() == '/') r.erase(0, 1);
  return UniqueFd(static_cast<int>(::syscall(SYS_openat2, dir.get(), r.c_str(), &how, sizeof how)));
}

}  // namespace

std::string cgroup2_mount() {
  std::ifstream in("/proc/self/mounts");
  std::string dev, dir, type, rest;
  while (in >> dev >> dir >> type && std::getline(in, rest))
    if (type == "cgroup2") return dir;
  return {};
}

std::string cgroup2_path(pid_t pid) {
  std::istringstream in(read_file(fmt::format("/proc/{}/cgroup", pid)));
  for (std::string line; std::getline(in, line);)
    if (line.rfind("0::", 0) == 0) return line.substr(3);
  return {};
}

JobFreezer JobFreezer::for_job(std::span<const DumpProcess> procs) {
  JobFreezer f;
  if (procs.empty()) {
    f.reason_ = "no process";
    return f;
  }
  const std::string mount = cgroup2_mount();
  std::string path;
  try {
    path = cgroup2_path(procs[0].host_pid);
  } catch (const Error& e) {
    f.reason_ = e.what();
    return f;
  }
  f.path_ = path;
  if (mount.empty() || path.empty()) {
    f.reason_ = "no cgroup2 file system";
    return f;
  }
  if (path == "/") {
    f.reason_ = "the job is in the root cgroup";
    return f;
  }
  if (path.find("/../") != std::string::npos || path.ends_with("/..") ||
      path.find('\n') != std::string::npos) {
    f.reason_ = "an unexpected cgroup path";
    return f;
  }
  // Every process below it must be the job's or its launcher: cgroup.procs of the
  // cgroup and of each descendant (a process of the job may have moved down).
  std::set<pid_t> ours;
  for (const DumpProcess& p : procs) ours.insert(p.host_pid);
  ours.insert(parent_of(procs[0].host_pid));
  const fs::path top = fs::path(mount) / path.substr(1);
  std::error_code ec;
  std::vector<fs::path> dirs{top};
  for (fs::recursive_directory_iterator it(top, ec), end; !ec && it != end; it.increment(ec))
    if (it->is_directory(ec) && !it->is_symlink(ec)) dirs.push_back(it->path());
  if (ec) {
    f.reason_ = fmt::format("reading {}: {}", top.string(), ec.message());
    return f;
  }
  for (const fs::path& d : dirs) {
    std::ifstream in(d / "cgroup.procs");
    if (!in) {
      f.reason_ = fmt::format("cannot read {}", (d / "cgroup.procs").string());
      return f;
    }
    for (long pid; in >> pid;)
      if (!ours.contains(static_cast<pid_t>(pid))) {
        f.reason_ = fmt::format("process {} in cgroup {} is not the job's", pid, path);
        return f;
      }
  }
  UniqueFd state = open_beneath(mount, path + "/cgroup.freeze", O_RDONLY);
  char c = 0;
  if (!state || ::pread(state.get(), &c, 1, 0) != 1) {
    f.reason_ = fmt::format("cannot read cgroup.freeze of {}", path);
    return f;
  }
  if (c != '0') {
    f.reason_ = fmt::format("cgroup {} is frozen already", path);
    return f;
  }
  f.file_ = open_beneath(mount, path + "/cgroup.freeze", O_WRONLY);
  if (!f.file_) f.reason_ = fmt::format("cannot open cgroup.freeze of {} for writing", path);
  return f;
}

JobFreezer::~JobFreezer() { thaw(); }

void JobFreezer::freeze() {
  if (!file_ || frozen_) return;
  if (::pwrite(file_.get(), "1", 1, 0) != 1)
    fail_errno("freezing the job's cgroup {} (cgroup.freeze)", path_);
  frozen_ = true;
}

void JobFreezer::thaw() noexcept {
  if (!file_ || !frozen_) return;
  frozen_ = false;
  [[maybe_unused]] ssize_t r = ::pwrite(file_.get(), "0", 1, 0);
}

}  // namespace fsched::ckpt
