// fschedd's fencing units (docs/fencing-node.md): cgroup directories (src/noded/cgroup.h),
// the lease and its guard process (src/noded/lease.h), and what the node does with a
// heartbeat reply (stale runs killed before the thaw) and with a launch it must refuse.
// Real cgroup v2 directories and processes: run as root on a host with cgroup2.
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <thread>

#include <gtest/gtest.h>

#include "common/error.h"
#include "noded/cgroup.h"
#include "noded/lease.h"
#include "noded/node.h"
#include "noded/spawn.h"
#include "proto/rpc.h"

namespace fs = std::filesystem;
using namespace fsched::noded;
using namespace std::chrono_literals;

namespace {

std::string slurp(const fs::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// cgroupfs directories are removed with rmdir, children first (their files cannot be
// unlinked, so fs::remove_all does not do).
void rm_cgroup_tree(const fs::path& p) {
  std::error_code ec;
  if (!fs::is_directory(p, ec)) return;
  for (auto& e : fs::directory_iterator(p, ec))
    if (e.is_directory()) rm_cgroup_tree(e.path());
  for (int i = 0; i < 100 && ::rmdir(p.c_str()) < 0 && errno == EBUSY; ++i)
    std::this_thread::sleep_for(20ms);
}

template <typename F>
bool eventually(F f, std::chrono::milliseconds within = 3s) {
  auto end = std::chrono::steady_clock::now() + within;
  while (std::chrono::steady_clock::now() < end) {
    if (f()) return true;
    std::this_thread::sleep_for(20ms);
  }
  return f();
}

// A `sleep 600` started inside cg (the way fschedd starts the engine).
pid_t sleeper_in(const Cgroup& cg) {
  const int stdio[3] = {0, 1, 2};
  return spawn_in_cgroup({"/bin/sleep", "600"}, {{"PATH", "/bin"}}, stdio, cg.fd());
}

// Whether pid is dead (reaped here: it is our child), waiting up to 3 s.
bool died(pid_t pid, int* status = nullptr) {
  return eventually([&] {
    int st = 0;
    pid_t w = ::waitpid(pid, &st, WNOHANG);
    if (w == pid && status) *status = st;
    return w == pid;
  });
}

bool frozen_events(const fs::path& cg) {
  return slurp(cg / "cgroup.events").find("frozen 1") != std::string::npos;
}

// The node name of a test: unique, so that tests running at once do not share cgroups.
std::string unique_name(const char* what) { return fmt::format("{}-{}", what, ::getpid()); }

struct JobsCgroup {
  Cgroup cg;
  fs::path top;
  explicit JobsCgroup(const std::string& node)
      : cg(make_jobs_cgroup(node)), top(cg.path().parent_path()) {}
  ~JobsCgroup() {
    cg.release();
    rm_cgroup_tree(top);
  }
};

}  // namespace

TEST(Cgroup, ParsesMountsAndOwnCgroup) {
  EXPECT_EQ(cgroup2_mount("tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
                          "cgroup /sys/fs/cgroup/freezer cgroup rw,freezer 0 0\n"
                          "cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0\n"),
            "/sys/fs/cgroup/unified");
  EXPECT_EQ(cgroup2_mount("cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"), "/sys/fs/cgroup");
  try {
    cgroup2_mount("proc /proc proc rw 0 0\n");
    FAIL() << "no cgroup2 accepted";
  } catch (const fsched::Error& e) {
    EXPECT_EQ(e.err(), ENOENT);
    EXPECT_NE(std::string(e.what()).find("/proc/self/mounts"), std::string::npos) << e.what();
  }
  EXPECT_EQ(own_cgroup2("4:memory:/x\n0::/system.slice/fschedd.service\n"),
            "/system.slice/fschedd.service");
  EXPECT_THROW(own_cgroup2("4:memory:/x\n"), fsched::Error);
  EXPECT_EQ(run_cgroup_name(12, 3), "job12.g3");
}

TEST(Cgroup, ChildStartsInsideFreezesAndIsKilledWithTheCgroup) {
  JobsCgroup jobs(unique_name("cgtest"));
  fs::path run_path = jobs.cg.path() / "job1.g1";
  {
    Cgroup run(run_path);
    pid_t pid = sleeper_in(run);
    // In the cgroup from its first instruction: /proc/PID/cgroup names it.
    std::string rel =
        "/" + fs::relative(run_path, cgroup2_mount(slurp("/proc/self/mounts"))).string();
    EXPECT_NE(slurp(fmt::format("/proc/{}/cgroup", pid)).find("0::" + rel + "\n"),
              std::string::npos)
        << slurp(fmt::format("/proc/{}/cgroup", pid));
    EXPECT_EQ(run.procs(), std::vector<pid_t>{pid});
    EXPECT_TRUE(run.populated());

    jobs.cg.freeze(true);  // the parent's freeze reaches the run
    EXPECT_TRUE(eventually([&] { return run.frozen(); }));
    jobs.cg.freeze(false);
    EXPECT_TRUE(eventually([&] { return !run.frozen(); }));

    jobs.cg.freeze(true);  // killing works on frozen processes too
    EXPECT_TRUE(eventually([&] { return run.frozen(); }));
    EXPECT_TRUE(run.kill_and_remove(3s));
    int st = 0;
    ASSERT_TRUE(died(pid, &st));
    EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    EXPECT_FALSE(fs::exists(run_path));
    jobs.cg.freeze(false);
  }
  // The destructor removes an empty cgroup and leaves a populated one.
  { Cgroup empty(run_path); }
  EXPECT_FALSE(fs::exists(run_path));
  pid_t pid = 0;
  {
    Cgroup busy(run_path);
    pid = sleeper_in(busy);
  }
  EXPECT_TRUE(fs::exists(run_path));
  ::kill(pid, SIGKILL);
  ASSERT_TRUE(died(pid));
}

TEST(Cgroup, NotACgroupIsAnErrorNamingThePath) {
  char tmpl[] = "/tmp/cgtest.XXXXXX";
  fs::path dir = ::mkdtemp(tmpl);
  try {
    Cgroup c(dir / "x");
    FAIL() << "a tmpfs directory taken for a cgroup";
  } catch (const fsched::Error& e) {
    EXPECT_NE(std::string(e.what()).find((dir / "x").string()), std::string::npos) << e.what();
  }
  EXPECT_TRUE(fs::exists(dir / "x"));  // not ours to remove
  fs::remove_all(dir);
}

TEST(Lease, GuardFreezesWhenTheLeaseRunsOutAndIsRestartedWhenItDies) {
  JobsCgroup jobs(unique_name("leasetest"));
  Cgroup run(jobs.cg.path() / "job1.g1");
  pid_t job = sleeper_in(run);
  {
    std::optional<Lease> holder;
    Lease& lease = holder.emplace(jobs.cg.path() / "cgroup.freeze");
    lease.renew(Lease::Clock::now(), 30s);  // before the guard: no freeze at its start
    lease.start_guard();
    ASSERT_GT(lease.guard_pid(), 0);
    EXPECT_TRUE(eventually([&] {
      return slurp(fmt::format("/proc/{}/comm", lease.guard_pid())) == "fschedd-guard\n";
    }));
    std::this_thread::sleep_for(3 * Lease::kPollInterval);
    EXPECT_FALSE(lease.frozen());
    EXPECT_FALSE(frozen_events(run.path()));

    // A heartbeat sent 29.5 s ago that got 30 s: the lease ends in half a second.
    auto sent = Lease::Clock::now() - 29500ms;
    lease.renew(sent, 30s);
    EXPECT_FALSE(lease.expired());
    ASSERT_TRUE(eventually([&] { return lease.frozen(); }, 3s));
    EXPECT_TRUE(lease.expired());
    EXPECT_GE(lease.frozen_at(), sent + 30s);
    EXPECT_LT(lease.frozen_at(), sent + 30s + 4 * Lease::kPollInterval);
    EXPECT_TRUE(eventually([&] { return frozen_events(run.path()); }));
    EXPECT_EQ(lease.guard_errno(), 0);

    // Renewed: the node thaws (the guard does not do that on its own).
    lease.renew(Lease::Clock::now(), 30s);
    std::this_thread::sleep_for(3 * Lease::kPollInterval);
    EXPECT_TRUE(frozen_events(run.path()));
    EXPECT_TRUE(lease.thaw());
    EXPECT_FALSE(lease.frozen());
    EXPECT_TRUE(eventually([&] { return !frozen_events(run.path()); }));
    EXPECT_FALSE(lease.thaw());  // nothing to thaw

    // A guard that died is started again, and fences as before.
    pid_t old = lease.guard_pid();
    ::kill(old, SIGKILL);
    EXPECT_TRUE(eventually([&] { return lease.ensure_guard(); }));
    EXPECT_NE(lease.guard_pid(), old);
    EXPECT_FALSE(lease.ensure_guard());
    lease.renew(Lease::Clock::now() - 30s, 30s);
    EXPECT_TRUE(eventually([&] { return lease.frozen() && frozen_events(run.path()); }));
    // The destructor ends the guard; the jobs stay frozen.
    pid_t g = lease.guard_pid();
    holder.reset();
    EXPECT_TRUE(eventually([&] { return ::kill(g, 0) < 0 && errno == ESRCH; }));
    EXPECT_TRUE(frozen_events(run.path()));
    // A new lease thaws what an earlier guard froze (the file says so) once renewed.
    Lease& again = holder.emplace(jobs.cg.path() / "cgroup.freeze");
    EXPECT_TRUE(again.thaw());
    EXPECT_TRUE(eventually([&] { return !frozen_events(run.path()); }));
  }
  ::kill(job, SIGKILL);
  ASSERT_TRUE(died(job));
}

TEST(Lease, GuardDiesWithItsParent) {
  JobsCgroup jobs(unique_name("leasedeath"));
  int pfd[2];
  ASSERT_EQ(::pipe(pfd), 0);
  pid_t mid = ::fork();
  if (mid == 0) {
    ::close(pfd[0]);
    Lease lease(jobs.cg.path() / "cgroup.freeze");
    lease.renew(Lease::Clock::now(), 30s);
    lease.start_guard();
    pid_t g = lease.guard_pid();
    (void)!::write(pfd[1], &g, sizeof g);
    ::_exit(0);  // no destructor: only PR_SET_PDEATHSIG can end the guard
  }
  ::close(pfd[1]);
  pid_t guard = 0;
  ASSERT_EQ(::read(pfd[0], &guard, sizeof guard), static_cast<ssize_t>(sizeof guard));
  ::close(pfd[0]);
  ::waitpid(mid, nullptr, 0);
  EXPECT_TRUE(eventually([&] { return ::kill(guard, 0) < 0 && errno == ESRCH; }));
}

namespace {

// A node daemon with one configured node and no controller (the port refuses).
struct TestNode {
  fs::path spool;
  std::string name = unique_name("nodetest");
  fsched::proto::Config cfg;
  TestNode() {
    char tmpl[] = "/tmp/nodetest.XXXXXX";
    spool = ::mkdtemp(tmpl);
    cfg.slurmd_spool_dir = spool;
    cfg.control_addr = "127.0.0.1";
    cfg.control_port = 1;
    cfg.heartbeat_interval = 1;
    cfg.slurmd_timeout = 10;
    cfg.cred_expire = 120;
    cfg.nodes.push_back({name, "127.0.0.1", 1, 1, 1});
  }
  ~TestNode() { fs::remove_all(spool); }

  // Records a run as a launch would have (its spool file), its process in its cgroup.
  void record(const LocalJob& j) {
    fs::create_directories(spool / fmt::format("job{}", j.job_id));
    std::ofstream(spool / fmt::format("job{}", j.job_id) / "job.json") << nlohmann::json(j).dump();
  }
};

unsigned long long start_ticks(pid_t pid) {
  std::string s = slurp(fmt::format("/proc/{}/stat", pid));
  std::istringstream in(s.substr(s.rfind(')') + 2));
  std::string f;
  for (int i = 3; i < 22; ++i) in >> f;
  unsigned long long t = 0;
  in >> t;
  return t;
}

LaunchRequest launch_of(int64_t job, int64_t generation, double issued = 0) {
  LaunchRequest q;
  q.job_id = job;
  q.generation = generation;
  q.issued = issued;
  return q;
}

int refusal(const NodeDaemon& node, const LaunchRequest& q) {
  try {
    node.check_fencing(q);
    return 0;
  } catch (const fsched::proto::RpcError& e) {
    return e.status();
  }
}

double unix_now() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

}  // namespace

// What a heartbeat reply listing a stale run does (the part of the protocol the
// controller drives, tested here without one): the stale run is killed while frozen,
// forgotten (no end report) with its files and cgroup, the other runs thawed; its
// generation is refused afterwards.
TEST(NodeFencing, StaleRunKilledBeforeTheThawAndItsGenerationRefused) {
  TestNode t;
  JobsCgroup jobs(t.name);
  pid_t stale_pid, live_pid;
  {
    Cgroup a(jobs.cg.path() / run_cgroup_name(7, 3)), b(jobs.cg.path() / run_cgroup_name(8, 1));
    stale_pid = sleeper_in(a);
    live_pid = sleeper_in(b);
    a.release();
    b.release();
  }
  LocalJob j7{.job_id = 7, .pid = stale_pid, .start_ticks = start_ticks(stale_pid), .node = t.name};
  j7.generation = 3;
  LocalJob j8{.job_id = 8, .pid = live_pid, .start_ticks = start_ticks(live_pid), .node = t.name};
  j8.generation = 1;
  t.record(j7);
  t.record(j8);
  // A leftover cgroup of a run nobody knows: killed at start.
  Cgroup stray(jobs.cg.path() / run_cgroup_name(5, 1));
  pid_t stray_pid = sleeper_in(stray);
  stray.release();

  NodeDaemon node(t.cfg, t.name);
  node.start_guard();
  node.start();
  EXPECT_TRUE(died(stray_pid));
  EXPECT_TRUE(eventually([&] { return !fs::exists(jobs.cg.path() / run_cgroup_name(5, 1)); }));

  // No lease yet (no controller has answered): the guard froze both runs, and no
  // new run may start.
  ASSERT_TRUE(eventually([&] { return node.lease().frozen(); }));
  EXPECT_TRUE(eventually([&] { return frozen_events(jobs.cg.path() / run_cgroup_name(8, 1)); }));
  EXPECT_EQ(refusal(node, launch_of(9, 1)), 503);
  auto runs = node.runs();
  ASSERT_EQ(runs.size(), 2u);

  fsched::proto::HeartbeatReply reply;
  reply.lease = 30;
  reply.stale = {{7, 3}, {8, 0}};  // job 8's generation 0 is not the one running: kept
  EXPECT_EQ(node.on_heartbeat_reply(reply, Lease::Clock::now()), 1);
  int st = 0;
  ASSERT_TRUE(died(stale_pid, &st));
  EXPECT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
  EXPECT_TRUE(eventually([&] { return !fs::exists(jobs.cg.path() / run_cgroup_name(7, 3)); }));
  EXPECT_FALSE(fs::exists(t.spool / "job7"));
  EXPECT_FALSE(node.lease().frozen());
  EXPECT_TRUE(eventually([&] { return !frozen_events(jobs.cg.path() / run_cgroup_name(8, 1)); }));
  EXPECT_EQ(::kill(live_pid, 0), 0);
  runs = node.runs();
  ASSERT_EQ(runs.size(), 1u);
  EXPECT_EQ(runs[0].job_id, 8);
  EXPECT_EQ(runs[0].generation, 1);

  // Launch checks: generations not newer than a stale or a running one, and
  // requests older than cred_expire, are refused (409).
  EXPECT_EQ(refusal(node, launch_of(7, 3)), 409);
  EXPECT_EQ(refusal(node, launch_of(7, 2)), 409);
  EXPECT_EQ(refusal(node, launch_of(7, 4, unix_now())), 0);
  EXPECT_EQ(refusal(node, launch_of(8, 1)), 409);
  EXPECT_EQ(refusal(node, launch_of(9, 1, unix_now() - 121)), 409);
  EXPECT_EQ(refusal(node, launch_of(9, 1, unix_now() - 60)), 0);
  EXPECT_EQ(refusal(node, launch_of(9, 1)), 0);  // issued 0: not stated

  ::kill(live_pid, SIGKILL);
  ASSERT_TRUE(died(live_pid));
  // Its end ends its cgroup too (the report waits: there is no controller).
  EXPECT_TRUE(eventually([&] { return !fs::exists(jobs.cg.path() / run_cgroup_name(8, 1)); }));
  node.stop();
}
