#include "noded/oplog.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/failure.h"
#include "noded/spawn.h"

extern char** environ;

namespace fsched::noded {
namespace fs = std::filesystem;

const char* to_string(OpKind k) {
  switch (k) {
    case OpKind::Launch:
      return "launch";
    case OpKind::Restore:
      return "restore";
    case OpKind::Checkpoint:
      return "checkpoint";
    case OpKind::Vacate:
      return "vacate";
  }
  return "?";
}

nlohmann::json OpRecord::report() const {
  nlohmann::json r{{"job_id", job_id}, {"kind", kind},           {"phase", phase},
                   {"dir", image_dir}, {"outcome", outcome},     {"error", error},
                   {"size", size},     {"freeze_ms", freeze_ms}, {"dump_ms", dump_ms},
                   {"pid", pid},       {"started", started}};
  if (!failure.empty()) r["failure"] = failure;
  if (!image_kind.empty()) r["image_kind"] = image_kind;
  if (pre_dump_bytes) r["pre_dump_bytes"] = pre_dump_bytes;
  return r;
}

int http_status_of(FailureClass c) {
  switch (c) {
    case FailureClass::kImage:
      return 422;  // the request's image cannot be processed
    case FailureClass::kUnsupported:
      return 501;  // the engine does not implement this state
    case FailureClass::kTransient:
      return 503;  // unavailable now: try later or elsewhere
    case FailureClass::kUsage:
      return 500;  // fschedd built a wrong command line
  }
  return 500;
}

FailureClass failure_of(const std::optional<RunnerResult>& res) {
  if (!res || res->timed_out) return FailureClass::kTransient;
  return failure_class_of_exit(res->exit_code);
}

void write_durably(const fs::path& path, std::string_view text, mode_t mode) {
  fs::path tmp = path;
  tmp += ".tmp";
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode));
    if (!fd) fail_errno("cannot create {}", tmp.string());
    if (::fchmod(fd.get(), mode) < 0) fail_errno("fchmod {}", tmp.string());
    size_t done = 0;
    while (done < text.size()) {
      ssize_t n = ::write(fd.get(), text.data() + done, text.size() - done);
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) fail_errno("cannot write {}", tmp.string());
      done += static_cast<size_t>(n);
    }
    // The record must be on disk before the operation it announces starts.
    if (::fsync(fd.get()) < 0) fail_errno("fsync {}", tmp.string());
  }
  if (::rename(tmp.c_str(), path.c_str()) < 0)
    fail_errno("rename {} to {}", tmp.string(), path.string());
  UniqueFd dir(::open(path.parent_path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (!dir || ::fsync(dir.get()) < 0) fail_errno("fsync directory {}", path.parent_path().string());
}

namespace {

std::optional<std::string> slurp(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  if (!in) return std::nullopt;
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

OpLog::OpLog(fs::path dir) : dir_(std::move(dir)) {
  if (::mkdir(dir_.c_str(), 0700) < 0 && errno != EEXIST)
    fail_errno("cannot create {}", dir_.string());
  struct stat st {};
  if (::lstat(dir_.c_str(), &st) < 0) fail_errno("stat {}", dir_.string());
  if (!S_ISDIR(st.st_mode)) fail("{} is not a directory", dir_.string());
  if (::chmod(dir_.c_str(), 0700) < 0) fail_errno("chmod {}", dir_.string());
}

fs::path OpLog::record_path(int64_t id) const { return dir_ / fmt::format("job{}.op.json", id); }
fs::path OpLog::result_path(int64_t id) const {
  return dir_ / fmt::format("job{}.result.json", id);
}
fs::path OpLog::lock_path(int64_t id) const { return dir_ / fmt::format("job{}.lock", id); }

void OpLog::put(const OpRecord& r) const {
  write_durably(record_path(r.job_id),
                nlohmann::json(r).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                0600);
}

std::vector<OpRecord> OpLog::load() const {
  std::vector<OpRecord> out;
  std::error_code ec;
  for (auto& e : fs::directory_iterator(dir_, ec)) {
    std::string name = e.path().filename().string();
    if (!name.ends_with(".op.json")) continue;
    try {
      auto text = slurp(e.path());
      if (!text) continue;
      out.push_back(nlohmann::json::parse(*text).get<OpRecord>());
    } catch (const std::exception& ex) {
      spdlog::warn("{}: unreadable operation record, ignored: {}", e.path().string(), ex.what());
    }
  }
  return out;
}

void OpLog::remove(int64_t id) const {
  std::error_code ec;
  fs::remove(record_path(id), ec);
  fs::remove(result_path(id), ec);
  fs::remove(lock_path(id), ec);
}

std::optional<RunnerResult> OpLog::result(int64_t id) const {
  auto text = slurp(result_path(id));
  if (!text) return std::nullopt;
  try {
    return nlohmann::json::parse(*text).get<RunnerResult>();
  } catch (const std::exception& e) {
    // A result file is renamed into place complete; a bad one means tampering or a
    // disk error: treat the operation as having left no result.
    spdlog::warn("{}: unreadable result: {}", result_path(id).string(), e.what());
    return std::nullopt;
  }
}

UniqueFd OpLog::try_lock(int64_t id) const {
  fs::path p = lock_path(id);
  UniqueFd fd(::open(p.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (!fd) fail_errno("cannot open {}", p.string());
  if (::flock(fd.get(), LOCK_EX | LOCK_NB) < 0) {
    if (errno == EWOULDBLOCK) return {};
    fail_errno("flock {}", p.string());
  }
  return fd;
}

pid_t OpLog::start_runner(int64_t id, const UniqueFd& lock, const std::vector<std::string>& argv,
                          const std::map<std::string, std::string>& env, int timeout_s,
                          const fs::path& cgroup) const {
  std::string self = fs::read_symlink("/proc/self/exe").string();
  std::vector<std::string> args{self,
                                "--op-runner",
                                result_path(id).string(),
                                std::to_string(timeout_s),
                                cgroup.empty() ? "-" : cgroup.string(),
                                "--"};
  args.insert(args.end(), argv.begin(), argv.end());
  fs::remove(result_path(id));
  // The lock's open file description goes to the runner as fd 3 (dup2 clears
  // FD_CLOEXEC on the copy); the flock is shared with it, so it stays held after this
  // process closes its own fd or dies.
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 2, "/dev/null", O_WRONLY, 0);
  UniqueFd high(::fcntl(lock.get(), F_DUPFD_CLOEXEC, 10));
  if (!high) fail_errno("dup of {}", lock_path(id).string());
  posix_spawn_file_actions_adddup2(&fa, high.get(), 3);
  posix_spawn_file_actions_addclosefrom_np(&fa, 4);
  pid_t pid = 0;
  try {
    pid = spawn_clean(args, env, &fa);
  } catch (...) {
    posix_spawn_file_actions_destroy(&fa);
    throw;
  }
  posix_spawn_file_actions_destroy(&fa);
  return pid;
}

int op_runner_main(int argc, char** argv) {
  // fschedd --op-runner RESULT TIMEOUT CGROUP|- -- PROGRAM ARGS...
  if (argc < 7 || std::strcmp(argv[5], "--") != 0) return 2;
  fs::path result = argv[2];
  int timeout_s = std::atoi(argv[3]);
  std::string cgroup = argv[4];
  std::vector<std::string> cmd(argv + 6, argv + argc);
  std::map<std::string, std::string> env;
  for (char** e = environ; *e; ++e) {
    std::string_view kv = *e;
    auto eq = kv.find('=');
    if (eq != std::string_view::npos) env.emplace(kv.substr(0, eq), kv.substr(eq + 1));
  }
  // fd 3 holds the operation's lock until this process exits; the engine must not
  // inherit it (spawn_wait closes fds from 3 in the child anyway).
  ::fcntl(3, F_SETFD, FD_CLOEXEC);
  RunnerResult r;
  try {
    UniqueFd cg;
    if (cgroup != "-") {
      cg = UniqueFd(::open(cgroup.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
      if (!cg) fail_errno("cannot open the job's cgroup {}", cgroup);
    }
    SpawnResult s = spawn_wait(cmd, env, timeout_s, cg ? cg.get() : -1);
    r.status = s.status;
    r.exit_code = s.exit_code();
    r.timed_out = s.timed_out;
    r.error_line = s.error_line();  // before err is moved from
    r.out = std::move(s.out);
    r.err = std::move(s.err);
  } catch (const std::exception& e) {
    r.exit_code = 127;
    r.error_line = e.what();
  }
  try {
    write_durably(result,
                  nlohmann::json(r).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace),
                  0600);
  } catch (const std::exception&) {
    return 1;  // no result file: fschedd decides from the image and the pid file
  }
  return 0;
}

}  // namespace fsched::noded
