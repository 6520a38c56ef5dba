#include "noded/cgroup.h"

#include <fcntl.h>
#include <linux/magic.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <cerrno>
#include <fstream>
#include <sstream>
#include <thread>

#include <fmt/format.h>

#include "common/error.h"

namespace fsched::noded {
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// "key value" lines of cgroup.events.
bool event_flag(const std::string& events, std::string_view key) {
  std::istringstream in(events);
  std::string k;
  int v = 0;
  while (in >> k >> v)
    if (k == key) return v != 0;
  return false;
}

}  // namespace

fs::path cgroup2_mount(const std::string& mounts) {
  std::istringstream in(mounts);
  std::string line;
  while (std::getline(in, line)) {
    std::istringstream f(line);
    std::string dev, dir, type;
    if (f >> dev >> dir >> type && type == "cgroup2") return dir;
  }
  throw Error(
      "no cgroup2 file system in /proc/self/mounts: fschedd needs cgroup v2 to fence its "
      "jobs (mount it, e.g. at /sys/fs/cgroup/unified)",
      ENOENT);
}

fs::path own_cgroup2(const std::string& text) {
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.starts_with("0::")) return line.substr(3);
  throw Error("no cgroup v2 line (\"0::PATH\") in /proc/self/cgroup", ENOENT);
}

Cgroup::Cgroup(fs::path path) : path_(std::move(path)) {
  if (::mkdir(path_.c_str(), 0755) < 0 && errno != EEXIST)
    fail_errno("cannot create cgroup {}", path_.string());
  dir_ = UniqueFd(::open(path_.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir_) fail_errno("cannot open cgroup {}", path_.string());
  struct statfs sf {};
  if (::fstatfs(dir_.get(), &sf) < 0) fail_errno("statfs {}", path_.string());
  if (sf.f_type != CGROUP2_SUPER_MAGIC) {
    std::string where = path_.string();
    path_.clear();  // not ours to remove
    fail("{} is not in a cgroup2 file system", where);
  }
}

Cgroup::~Cgroup() {
  // An empty one only: jobs keep running (in their cgroup) when fschedd stops.
  if (!path_.empty()) ::rmdir(path_.c_str());
}

Cgroup::Cgroup(Cgroup&& o) noexcept : path_(std::move(o.path_)), dir_(std::move(o.dir_)) {
  o.path_.clear();
}

Cgroup& Cgroup::operator=(Cgroup&& o) noexcept {
  if (this != &o) {
    if (!path_.empty()) ::rmdir(path_.c_str());
    path_ = std::move(o.path_);
    o.path_.clear();
    dir_ = std::move(o.dir_);
  }
  return *this;
}

void Cgroup::write_file(const char* name, std::string_view text) const {
  UniqueFd fd(::openat(dir_.get(), name, O_WRONLY | O_CLOEXEC));
  if (!fd) fail_errno("cannot open {}/{}", path_.string(), name);
  if (::write(fd.get(), text.data(), text.size()) < 0)
    fail_errno("cannot write \"{}\" to {}/{}", text, path_.string(), name);
}

std::string Cgroup::read_file(const char* name) const { return slurp(path_ / name); }

void Cgroup::add(pid_t pid) const { write_file("cgroup.procs", std::to_string(pid)); }

std::vector<pid_t> Cgroup::procs() const {
  std::istringstream in(read_file("cgroup.procs"));
  std::vector<pid_t> out;
  pid_t p = 0;
  while (in >> p) out.push_back(p);
  return out;
}

bool Cgroup::populated() const { return event_flag(read_file("cgroup.events"), "populated"); }
bool Cgroup::frozen() const { return event_flag(read_file("cgroup.events"), "frozen"); }

bool Cgroup::freeze_set() const { return read_file("cgroup.freeze").starts_with("1"); }

void Cgroup::freeze(bool on) const { write_file("cgroup.freeze", on ? "1" : "0"); }

void Cgroup::kill() const { write_file("cgroup.kill", "1"); }

bool Cgroup::kill_and_remove(std::chrono::milliseconds wait) {
  if (path_.empty()) return true;
  kill();
  // cgroup.kill only sends the signals: the processes leave the cgroup as they exit.
  auto end = std::chrono::steady_clock::now() + wait;
  for (;;) {
    if (::rmdir(path_.c_str()) == 0 || errno == ENOENT) {
      path_.clear();
      dir_.reset();
      return true;
    }
    if (errno != EBUSY || std::chrono::steady_clock::now() >= end) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

bool Cgroup::try_remove() {
  if (path_.empty()) return true;
  if (::rmdir(path_.c_str()) < 0 && errno != ENOENT) return false;
  path_.clear();
  dir_.reset();
  return true;
}

void Cgroup::release() {
  path_.clear();
  dir_.reset();
}

Cgroup make_jobs_cgroup(const std::string& node) {
  fs::path mount = cgroup2_mount(slurp("/proc/self/mounts"));
  fs::path own = own_cgroup2(slurp("/proc/self/cgroup"));
  auto make = [&](const fs::path& base) {
    Cgroup top(base / ("fsched-" + node));
    Cgroup jobs(top.path() / "jobs");
    top.release();  // the parent of "jobs" stays with it
    return jobs;
  };
  fs::path mine = mount / own.relative_path();
  try {
    return make(mine);
  } catch (const Error& e) {
    // Not delegated to us (a service manager's cgroup, a read-only cgroupfs in a
    // container): the top of the hierarchy, where root usually may create one.
    if (e.err() != EACCES && e.err() != EPERM && e.err() != EROFS) throw;
    if (mine == mount) throw;
    return make(mount);
  }
}

std::string run_cgroup_name(int64_t job_id, int64_t generation) {
  return fmt::format("job{}.g{}", job_id, generation);
}

}  // namespace fsched::noded
