// Written-page tracking of a job between dumps (mem_tracking.h).
#include "ckpt/mem_tracking.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <nlohmann/json.hpp>

#include "ckpt/engine.h"
#include "ckpt/inject.h"
#include "ckpt/proc.h"
#include "ckpt/remote.h"
#include "ckpt/vma_kind.h"
#include "common/error.h"

namespace fsched::ckpt {

NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(TrackedProcess, pid, start_time, init_fd)
NLOHMANN_DEFINE_TYPE_NON_INTRUSIVE_WITH_DEFAULT(TrackingState, epoch, procs)

namespace {

constexpr std::string_view kUffdLink = "anon_inode:[userfaultfd]";

std::string memfd_link() { return fmt::format("/memfd:{} (deleted)", kTrackingMemfdName); }

std::uint64_t start_time_of(pid_t host_pid) { return std::stoull(read_stat(host_pid).at(21)); }

// Init's fds whose link is `link`, by number.
std::vector<int> init_fds_with_link(pid_t init, std::string_view link) {
  std::vector<int> out;
  for (auto& e : std::filesystem::directory_iterator(fmt::format("/proc/{}/fd", init))) {
    const std::string name = e.path().filename().string();
    try {
      if (read_link(e.path().string()) == link) out.push_back(std::stoi(name));
    } catch (const Error&) {  // closed meanwhile
    }
  }
  return out;
}

// Takes the state's lock (JobTracking::attach) on memfd `fd`; false when another
// process holds it, whose pid goes to `holder`.
bool lock_state(int fd, pid_t& holder) {
  struct flock fl {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (::fcntl(fd, F_SETLK, &fl) == 0) return true;
  if (errno != EAGAIN && errno != EACCES) fail_errno("the job's tracking state: lock");
  struct flock who {};
  who.l_type = F_WRLCK;
  who.l_whence = SEEK_SET;
  holder = ::fcntl(fd, F_GETLK, &who) == 0 && who.l_type != F_UNLCK ? who.l_pid : 0;
  return false;
}

// Our reference to the state memfd in the job's init (host pid `init`); none yet: null.
UniqueFd grab_state_memfd(pid_t init) {
  for (int fd : init_fds_with_link(init, memfd_link()))
    return grab_fd(init, fd, "the job's tracking state");
  return {};
}

}  // namespace

bool is_tracking_handle(std::string_view link) { return link == kUffdLink || link == memfd_link(); }

JobTracking JobTracking::attach(std::span<DumpProcess> procs) {
  JobTracking t;
  const DumpProcess& init = procs.front();
  if (init.rec.pid != 1) fail("internal: the job's init is not the first process");
  t.memfd_ = grab_state_memfd(init.host_pid);
  if (!init_fds_with_link(init.host_pid, kUffdLink).empty())
    for (DumpProcess& p : procs) p.uffd_wp_ours = true;
  if (!t.memfd_) return t;
  pid_t holder = 0;
  if (!lock_state(t.memfd_.get(), holder))
    fail(
        "the job's written-page tracking is held by another dump of this job under way "
        "(process {}): one dump of a job at a time",
        holder);
  t.read_state();
  return t;
}

std::optional<JobTracking::Claim> JobTracking::claim_for_pre_copy(pid_t init_host_pid,
                                                                  const std::string& parent_id) {
  JobTracking t;
  t.memfd_ = grab_state_memfd(init_host_pid);
  pid_t holder = 0;
  if (!t.memfd_ || !lock_state(t.memfd_.get(), holder)) return std::nullopt;
  t.read_state();
  if (parent_id.empty() || t.state_.epoch != parent_id) return std::nullopt;
  t.state_.epoch = "pre-copy " + random_id();
  t.write_state();
  return Claim{t.state_, std::move(t.memfd_)};
}

void JobTracking::read_state() {
  std::string text(kMaxTrackingStateBytes, '\0');
  ssize_t n = ::pread(memfd_.get(), text.data(), text.size(), 0);
  if (n < 0) fail_errno("the job's tracking state: read");
  text.resize(static_cast<std::size_t>(n));
  try {
    state_ = nlohmann::json::parse(text).get<TrackingState>();
  } catch (const std::exception&) {
    // Cut short by a dumper that died while writing it: unusable, start over.
    state_ = TrackingState{};
  }
}

void JobTracking::write_state() {
  const std::string text = nlohmann::json(state_).dump() + "\n";
  if (text.size() > kMaxTrackingStateBytes) fail("the job's tracking state is too large");
  if (::ftruncate(memfd_.get(), 0) < 0 ||
      ::pwrite(memfd_.get(), text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()))
    fail_errno("the job's tracking state: write");
}

void JobTracking::prepare(std::span<DumpProcess> procs) {
  DumpProcess& init = procs.front();
  if (!memfd_) {
    long fd = with_injection(init, [&] {
      const std::string name(kTrackingMemfdName);
      remote_write(init.host_pid, init.scratch, name.c_str(), name.size() + 1);
      return init.inj->call_ok("the job's tracking state: memfd_create in init", SYS_memfd_create,
                               init.scratch, MFD_CLOEXEC);
    });
    memfd_ = grab_fd(init.host_pid, static_cast<int>(fd), "the job's tracking state");
    pid_t holder = 0;
    if (!lock_state(memfd_.get(), holder))  // new: nobody else can have it yet
      fail("the job's written-page tracking is held by another dump (process {})", holder);
  }
  // Before any reset: a dump that dies from here on leaves the state unusable.
  const TrackingState before = state_;
  state_.epoch = "resetting";
  write_state();

  // Every userfaultfd init holds that no live entry of the state names (a state that
  // was lost, processes that exited) is closed: it would keep its ranges registered.
  std::vector<TrackedProcess> next;
  live_.clear();
  for (DumpProcess& p : procs) {
    if (p.zombie) continue;
    const std::string who = fmt::format("process {} (pid {} in the job)", p.host_pid, p.rec.pid);
    const std::uint64_t start = start_time_of(p.host_pid);
    Live l;
    l.pid = p.rec.pid;
    int init_fd = -1;
    for (const TrackedProcess& t : before.procs)
      if (t.pid == p.rec.pid && t.start_time == start) init_fd = t.init_fd;
    auto register_all = [&] {
      l.tracked.clear();
      for (const Vma& v : p.rec.vmas)
        if (!v.shared && !is_kernel_mapping(v.kind) &&
            track_range(l.uffd.get(), v.start, v.end, who))
          l.tracked.emplace_back(v.start, v.end);
    };
    if (init_fd >= 0) {
      try {
        if (read_link(fmt::format("/proc/{}/fd/{}", init.host_pid, init_fd)) == kUffdLink)
          l.uffd = grab_fd(init.host_pid, init_fd, who + ": its userfaultfd");
      } catch (const Error&) {
      }
      if (l.uffd) register_all();
      // After execve(2) the process has another mm, which the old userfaultfd does
      // not reach: nothing registers. Make a new one.
      if (l.tracked.empty()) {
        l.uffd.reset();
        init_fd = -1;
      }
    }
    if (!l.uffd) {
      long fd = with_injection(
          p, [&] { return p.inj->call(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY); });
      if (fd < 0) continue;  // refused (a seccomp filter, a sysctl): not tracked
      init_fd = static_cast<int>(with_injection(init, [&] {
        return take_fd(*init.inj, p.rec.pid, static_cast<int>(fd), who + ": its userfaultfd");
      }));
      with_injection(p, [&] { p.inj->call(SYS_close, static_cast<std::uint64_t>(fd)); });
      l.uffd = grab_fd(init.host_pid, init_fd, who + ": its userfaultfd");
      start_wp_async(l.uffd.get(), who);
      register_all();
    }
    l.pagemap.reset(
        ::open(fmt::format("/proc/{}/pagemap", p.host_pid).c_str(), O_RDONLY | O_CLOEXEC));
    if (!l.pagemap) fail_errno("{}: cannot open its pagemap", who);
    next.push_back({p.rec.pid, start, init_fd});
    live_.push_back(std::move(l));
  }
  std::vector<int> stale;
  for (int fd : init_fds_with_link(init.host_pid, kUffdLink))
    if (std::none_of(next.begin(), next.end(),
                     [&](const TrackedProcess& t) { return t.init_fd == fd; }))
      stale.push_back(fd);
  if (!stale.empty())
    with_injection(init, [&] {
      for (int fd : stale) init.inj->call(SYS_close, static_cast<std::uint64_t>(fd));
    });
  state_.procs = std::move(next);
  write_state();
}

std::optional<std::vector<PageStates>> JobTracking::reset_scan(const DumpProcess& p,
                                                               std::uint64_t start,
                                                               std::uint64_t end,
                                                               bool report_file) {
  for (Live& l : live_) {
    if (l.pid != p.rec.pid) continue;
    for (auto [s, e] : l.tracked)
      if (s <= start && end <= e)
        return scan_pages(l.pagemap.get(), start, end, true,
                          fmt::format("process {} (pid {} in the job)", p.host_pid, p.rec.pid),
                          report_file);
  }
  return std::nullopt;
}

void JobTracking::reset_all() {
  for (Live& l : live_)
    for (auto [s, e] : l.tracked)
      scan_pages(l.pagemap.get(), s, e, true, fmt::format("pid {} in the job", l.pid));
}

void JobTracking::commit(const std::string& image_id) {
  state_.epoch = image_id;
  write_state();
}

}  // namespace fsched::ckpt
