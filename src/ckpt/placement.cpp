// Root directory, cgroup membership and audit login uid of each process (placement.h).
#include "ckpt/placement.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <charconv>
#include <fstream>
#include <map>
#include <sstream>
#include <string_view>
#include <vector>

#include "ckpt/cgroup_freeze.h"
#include "ckpt/fsaccess.h"
#include "ckpt/inject.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

// The lines of /proc/PID/cgroup: {hierarchy id and controllers, path}.
std::vector<std::pair<std::string, std::string>> cgroup_lines(pid_t pid) {
  std::vector<std::pair<std::string, std::string>> out;
  std::istringstream in(read_file(fmt::format("/proc/{}/cgroup", pid)));
  for (std::string line; std::getline(in, line);) {
    auto c = line.rfind(':', line.find('/') == std::string::npos ? line.size() : line.find('/'));
    if (c == std::string::npos) continue;
    out.emplace_back(line.substr(0, c), line.substr(c + 1));
  }
  return out;
}

// Trimmed contents of a cgroup interface file.
std::string cg_read(const std::string& path) {
  std::string s = read_file(path);
  while (!s.empty() && (s.back() == '\n' || s.back() == ' ')) s.pop_back();
  return s;
}

// The components of a relative path, split at every '/' (empty ones kept).
std::vector<std::string> components(std::string_view rel) {
  std::vector<std::string> out;
  for (std::size_t at = 0;;) {
    std::size_t slash = rel.find('/', at);
    out.emplace_back(rel.substr(at, slash == std::string_view::npos ? rel.npos : slash - at));
    if (slash == std::string_view::npos) return out;
    at = slash + 1;
  }
}

// A relative cgroup path from an image: plain components only.
bool plain_relative(std::string_view rel) {
  if (rel.empty()) return false;
  for (auto& c : components(rel))
    if (c.empty() || c == "." || c == "..") return false;
  return true;
}

// Controllers enabled for the children of each cgroup from `base` down to, not
// including, `base`/`rel`: the first non-empty cgroup.subtree_control, or "".
std::string controllers_below(const std::string& base, const std::string& rel) {
  auto parts = components(rel);
  parts.pop_back();  // the cgroup itself: its own controllers are its parent's choice
  std::string dir = base;
  for (std::size_t i = 0;; ++i) {
    std::string ctl = cg_read(dir + "/cgroup.subtree_control");
    if (!ctl.empty()) return fmt::format("{} ({})", ctl, dir);
    if (i == parts.size()) return {};
    dir += "/" + parts[i];
  }
}

// "" when the kernel has no audit support (no such file).
std::string read_loginuid(pid_t pid) {
  std::string path = fmt::format("/proc/{}/loginuid", pid);
  if (::access(path.c_str(), F_OK) != 0) return {};
  std::string s = read_file(path);
  while (!s.empty() && s.back() == '\n') s.pop_back();
  return s;
}

void dump_cgroup(DumpProcess& p, const DumpProcess& init, const std::string& who) {
  if (&p == &init) return;
  auto mine = cgroup_lines(p.host_pid), its = cgroup_lines(init.host_pid);
  std::map<std::string, std::string> init_of(its.begin(), its.end());
  for (auto& [h, path] : mine) {
    auto it = init_of.find(h);
    std::string ip = it == init_of.end() ? std::string("(none)") : it->second;
    if (path == ip) continue;
    if (h != "0:")
      fail_unsupported("{}: in cgroup v1 hierarchy {} at {}, its job's init at {}: not supported",
                       who, h, path, ip);
    std::string prefix = ip == "/" ? ip : ip + "/";
    if (!path.starts_with(prefix))
      fail_unsupported("{}: in cgroup {}, outside its job's cgroup {}: not supported", who, path,
                       ip);
    std::string rel = path.substr(prefix.size());
    std::string mount = cgroup2_mount();
    if (mount.empty()) fail("{}: in cgroup {}, but no cgroup2 file system is mounted", who, path);
    std::string base = ip == "/" ? mount : mount + ip;
    if (std::string c = controllers_below(base, rel); !c.empty())
      fail_unsupported(
          "{}: in cgroup {} below its job's cgroup {}, with controllers {} enabled: its limits "
          "would not be restored (not supported)",
          who, path, ip, c);
    if (std::string type = cg_read(base + "/" + rel + "/cgroup.type"); type != "domain")
      fail_unsupported("{}: in cgroup {} of type {}: not supported (only domain cgroups)", who,
                       path, type);
    p.rec.cgroup = rel;
  }
}

void dump_root(DumpProcess& p, const std::string& who) {
  std::string root = read_link(fmt::format("/proc/{}/root", p.host_pid));
  if (root == "/") return;
  if (root.empty() || root.front() != '/' || root.ends_with(" (deleted)"))
    fail_unsupported("{}: its root directory {} cannot be reopened: not supported", who, root);
  struct stat st {};
  if (::stat(fmt::format("/proc/{}/root", p.host_pid).c_str(), &st) != 0)
    fail_errno("{}: stat of its root directory {}", who, root);
  p.rec.root = root;
  p.rec.root_id = file_id_of(st);
}

void restore_cgroup(RestoreProcess& p, const std::string& who) {
  const Process& r = *p.rec;
  if (!plain_relative(r.cgroup)) fail_image("image: {}: cgroup path \"{}\"", who, r.cgroup);
  // The restored process was made in the restored init's cgroup (the job's, chosen by
  // whoever started the restore); its sub-cgroup is taken relative to that.
  std::string ip = cgroup2_path(p.host_pid);
  std::string mount = cgroup2_mount();
  if (ip.empty() || mount.empty())
    fail("{}: was in sub-cgroup {} of its job's, but this host has no cgroup2", who, r.cgroup);
  std::string base = ip == "/" ? mount : mount + ip;
  UniqueFd dir(::open(base.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
  if (!dir) fail_errno("{}: open of its job's cgroup {}", who, base);
  std::string done = base;
  for (auto& c : components(r.cgroup)) {
    done += "/" + c;
    if (::mkdirat(dir.get(), c.c_str(), 0755) != 0 && errno != EEXIST)
      fail_errno("{}: mkdir of cgroup {}", who, done);
    UniqueFd sub(::openat(dir.get(), c.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC | O_NOFOLLOW));
    if (!sub) fail_errno("{}: open of cgroup {}", who, done);
    dir = std::move(sub);
  }
  if (std::string c = controllers_below(base, r.cgroup); !c.empty())
    fail("{}: cgroup {}/{} has controllers {} enabled now: its limits would differ", who, base,
         r.cgroup, c);
  UniqueFd procs(::openat(dir.get(), "cgroup.procs", O_WRONLY | O_CLOEXEC | O_NOFOLLOW));
  if (!procs) fail_errno("{}: open of {}/{}/cgroup.procs", who, base, r.cgroup);
  std::string pid = std::to_string(p.host_pid);
  if (::write(procs.get(), pid.data(), pid.size()) != static_cast<ssize_t>(pid.size()))
    fail_errno("{}: cannot move it into cgroup {}/{}", who, base, r.cgroup);
  std::string want = ip == "/" ? "/" + r.cgroup : ip + "/" + r.cgroup;
  if (std::string now = cgroup2_path(p.host_pid); now != want)
    fail("{}: moved into cgroup {}, the kernel shows {}", who, want, now);
}

void restore_loginuid(RestoreProcess& p, const InjectionArea& area, const std::string& who) {
  const Process& r = *p.rec;
  std::string now = read_loginuid(p.host_pid);
  if (now == r.loginuid) return;
  unsigned long long v = 0;
  auto [e, ec] = std::from_chars(r.loginuid.data(), r.loginuid.data() + r.loginuid.size(), v);
  if (ec != std::errc() || e != r.loginuid.data() + r.loginuid.size() || v > 0xffffffffULL)
    fail_image("image: {}: login uid \"{}\"", who, r.loginuid);
  if (now.empty())
    fail("{}: had audit login uid {}, this kernel has none (no CONFIG_AUDIT)", who, r.loginuid);
  Injector& inj = p.leader();
  static constexpr char kPath[] = "/proc/self/loginuid";
  remote_write(p.host_pid, area.data(), kPath, sizeof kPath);
  remote_write(p.host_pid, area.data() + 64, r.loginuid.data(), r.loginuid.size());
  long fd = inj.call_ok(who + ": open /proc/self/loginuid", SYS_openat,
                        static_cast<std::uint64_t>(AT_FDCWD), area.data(),
                        static_cast<std::uint64_t>(O_WRONLY | O_CLOEXEC));
  long w = inj.call(SYS_write, static_cast<std::uint64_t>(fd), area.data() + 64, r.loginuid.size());
  inj.call(SYS_close, static_cast<std::uint64_t>(fd));
  if (w < 0)
    // Setting it again once set needs the audit rule that makes it mutable
    // (audit_loginuid_immutable) off, and always CAP_AUDIT_CONTROL.
    throw Error(
        fmt::format("{}: cannot set its audit login uid {} (it is {} here)", who, r.loginuid, now),
        static_cast<int>(-w));
  if (std::string after = read_loginuid(p.host_pid); after != r.loginuid)
    fail("{}: audit login uid set to {}, the kernel shows {}", who, r.loginuid, after);
}

void restore_root(RestoreProcess& p, const InjectionArea& area, const std::string& who) {
  const Process& r = *p.rec;
  if (r.root.empty() || r.root.front() != '/')
    fail_image("image: {}: root directory \"{}\"", who, r.root);
  Injector& inj = p.leader();
  // As the job, without symlinks, and the very directory it was: a directory swapped
  // for another (one the user controls, with a crafted libc and a set-user-ID program
  // hard-linked in) would otherwise become a root process's root.
  long dir = open_no_symlinks(inj, p.host_pid, area, r.root, O_PATH | O_DIRECTORY | O_CLOEXEC, 0,
                              who + ": root directory");
  struct stat st {};
  if (::stat(fmt::format("/proc/{}/fd/{}", p.host_pid, dir).c_str(), &st) != 0)
    fail_errno("{}: stat of root directory {}", who, r.root);
  bool same_boot = p.image->boot_id == boot_id();
  if (st.st_ino != r.root_id.ino || (same_boot && r.root_id.dev && st.st_dev != r.root_id.dev))
    fail("restore refused: {}: root directory {} is not the directory it was (inode {}, was {})",
         who, r.root, st.st_ino, r.root_id.ino);
  static constexpr char kDot[] = ".";
  remote_write(p.host_pid, area.data(), kDot, sizeof kDot);
  long cwd =
      inj.call_ok(who + ": open of its cwd", SYS_openat, static_cast<std::uint64_t>(AT_FDCWD),
                  area.data(), static_cast<std::uint64_t>(O_PATH | O_DIRECTORY | O_CLOEXEC));
  inj.call_ok(who + ": fchdir to its root directory", SYS_fchdir, static_cast<std::uint64_t>(dir));
  inj.call_ok(who + ": chroot " + r.root, SYS_chroot, area.data());
  inj.call_ok(who + ": fchdir back to its cwd", SYS_fchdir, static_cast<std::uint64_t>(cwd));
  inj.call(SYS_close, static_cast<std::uint64_t>(cwd));
  inj.call(SYS_close, static_cast<std::uint64_t>(dir));
  if (std::string now = read_link(fmt::format("/proc/{}/root", p.host_pid)); now != r.root)
    fail("{}: root directory set to {}, the kernel shows {}", who, r.root, now);
}

}  // namespace

void dump_placement(DumpProcess& p, const DumpProcess& init) {
  std::string who = fmt::format("process {} (pid {} in the job)", p.host_pid, p.rec.pid);
  dump_root(p, who);
  dump_cgroup(p, init, who);
  p.rec.loginuid = read_loginuid(p.host_pid);
  p.rec.placement = true;
}

void restore_placement(RestoreProcess& p, const InjectionArea& area) {
  const Process& r = *p.rec;
  if (!r.placement) return;
  std::string who = fmt::format("process {}", r.pid);
  if (!r.cgroup.empty()) restore_cgroup(p, who);
  if (!r.loginuid.empty()) restore_loginuid(p, area, who);
  if (!r.root.empty()) restore_root(p, area, who);
}

}  // namespace fsched::ckpt
