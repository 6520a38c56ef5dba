// The job freezer (src/ckpt/cgroup_freeze.h) on a real child process in a cgroup v2 of
// its own: which cgroups it accepts, and the kernel fact the TCP repair windows rely on
// -- a task stopped by ptrace whose tracer is killed stays frozen until the cgroup is
// thawed.
#include "ckpt/cgroup_freeze.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <thread>

#include "ckpt/dump_context.h"

namespace fsched::ckpt {
namespace {

namespace fs = std::filesystem;

// A cgroup v2 directory of the test's own, removed at the end.
class TestCgroup {
 public:
  TestCgroup() {
    const std::string mount = cgroup2_mount();
    if (mount.empty()) return;
    path_ = fs::path(mount) / fmt::format("fsched-unit-freeze-{}", ::getpid());
    std::error_code ec;
    fs::create_directory(path_, ec);
    if (ec) path_.clear();
  }
  ~TestCgroup() {
    if (path_.empty()) return;
    std::ofstream(path_ / "cgroup.kill") << "1";
    for (int i = 0; i < 200 && ::rmdir(path_.c_str()) < 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const fs::path& path() const { return path_; }
  void write(const char* file, const std::string& v) const { std::ofstream(path_ / file) << v; }

 private:
  fs::path path_;
};

// A child that moves into `cg` (if given) and counts in shared memory until killed.
class Counter {
 public:
  explicit Counter(const fs::path& cg) {
    void* m = ::mmap(nullptr, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    count_ = static_cast<std::atomic<long>*>(m);
    new (count_) std::atomic<long>(0);
    pid_ = ::fork();
    if (pid_ == 0) {
      if (!cg.empty()) std::ofstream(cg / "cgroup.procs") << ::getpid();
      for (;;) {
        count_->fetch_add(1);
        ::usleep(500);
      }
    }
    while (count_->load() == 0) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ~Counter() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    ::munmap(count_, 4096);
  }
  pid_t pid() const { return pid_; }
  // How much it counted in `ms` milliseconds.
  long advance(int ms) const {
    long a = count_->load();
    std::this_thread::sleep_for(std::chrono::milliseconds(ms));
    return count_->load() - a;
  }

 private:
  pid_t pid_ = -1;
  std::atomic<long>* count_ = nullptr;
};

std::vector<DumpProcess> job_of(pid_t pid) {
  std::vector<DumpProcess> procs(1);
  procs[0].host_pid = pid;
  return procs;
}

TEST(JobFreezer, FrozenAcrossTheTracersDeathUntilThawed) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (cgroup v2 directories)";
  TestCgroup cg;
  ASSERT_FALSE(cg.path().empty()) << "no writable cgroup2 mount";
  Counter job(cg.path());
  auto procs = job_of(job.pid());
  ASSERT_TRUE(JobFreezer::for_job(procs).usable()) << JobFreezer::for_job(procs).reason();
  // The dumper's part, in a process that dies by SIGKILL while the job is held.
  pid_t tracer = ::fork();
  if (tracer == 0) {
    if (::ptrace(PTRACE_SEIZE, job.pid(), 0, 0) < 0) ::_exit(1);
    ::ptrace(PTRACE_INTERRUPT, job.pid(), 0, 0);
    int st = 0;
    ::waitpid(job.pid(), &st, __WALL);
    JobFreezer f = JobFreezer::for_job(procs);
    f.freeze();
    ::kill(::getpid(), SIGKILL);
  }
  int st = 0;
  ASSERT_EQ(::waitpid(tracer, &st, 0), tracer);
  ASSERT_TRUE(WIFSIGNALED(st)) << "the tracer failed before its death: " << st;
  EXPECT_EQ(job.advance(200), 0) << "the job ran after its tracer died";
  cg.write("cgroup.freeze", "0");  // what the guardian does
  EXPECT_GT(job.advance(200), 0) << "the job did not run again once thawed";
}

TEST(JobFreezer, ThawPutsBackWhatFreezeDid) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (cgroup v2 directories)";
  TestCgroup cg;
  ASSERT_FALSE(cg.path().empty());
  Counter job(cg.path());
  auto procs = job_of(job.pid());
  JobFreezer f = JobFreezer::for_job(procs);
  ASSERT_TRUE(f.usable()) << f.reason();
  EXPECT_EQ(f.path(), "/" + cg.path().filename().string());
  f.freeze();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(job.advance(100), 0);
  f.thaw();
  EXPECT_GT(job.advance(200), 0);
  // A cgroup frozen by someone else (a suspended job) is left as it is.
  cg.write("cgroup.freeze", "1");
  JobFreezer other = JobFreezer::for_job(procs);
  EXPECT_FALSE(other.usable());
  EXPECT_NE(other.reason().find("frozen already"), std::string::npos) << other.reason();
  cg.write("cgroup.freeze", "0");
}

TEST(JobFreezer, InertOutsideACgroupOfTheJobsOwn) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (cgroup v2 directories)";
  TestCgroup cg;
  ASSERT_FALSE(cg.path().empty());
  // Another process in the job's cgroup: freezing would stop it too.
  Counter job(cg.path()), stranger(cg.path());
  JobFreezer f = JobFreezer::for_job(job_of(job.pid()));
  EXPECT_FALSE(f.usable());
  EXPECT_NE(f.reason().find(fmt::format("process {} ", stranger.pid())), std::string::npos)
      << f.reason();
  f.freeze();  // inert: a no-op
  EXPECT_GT(stranger.advance(100), 0);
  // The test's own cgroup holds the test itself (the dumper, in a real dump).
  Counter here{fs::path()};
  JobFreezer mine = JobFreezer::for_job(job_of(here.pid()));
  EXPECT_FALSE(mine.usable()) << mine.path();
}

}  // namespace
}  // namespace fsched::ckpt
