// Unit tests of engine pieces that need no ptrace: /proc parsing, the syscall-restart
// fixup, the manifest's JSON mapping, and freezing/injecting into a real child.
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include "ckpt/inject.h"
#include "ckpt/manifest.h"
#include "ckpt/proc.h"
#include "common/error.h"

namespace ck = fsched::ckpt;

TEST(Proc, StatFieldsAreNumberedAsInProc5) {
  // Our own comm has no spaces; check the field numbering against /proc/self/status.
  auto f = ck::read_stat(::getpid());
  ASSERT_GT(f.size(), 51u);
  EXPECT_EQ(std::stoi(f[1]), ::getpid());
  EXPECT_EQ(std::stoi(f[4]), ::getppid());
  EXPECT_EQ(f[3], "R");
}

TEST(Proc, StatusAndInts) {
  auto st = ck::read_status(::getpid());
  auto uids = ck::parse_ints(st.at("Uid"));
  ASSERT_EQ(uids.size(), 4u);
  EXPECT_EQ(uids[0], static_cast<long long>(::getuid()));
  EXPECT_EQ(ck::parse_ints("1\t2 3\n"), (std::vector<long long>{1, 2, 3}));
  EXPECT_TRUE(ck::parse_ints("").empty());
}

TEST(Proc, SmapsHasFlagsForEveryVma) {
  // A sleeping child: its layout does not change between the two reads (ours does
  // under ASan, whose allocator maps memory as the reads allocate).
  pid_t child = ::fork();
  if (child == 0) {
    for (;;) ::pause();
  }
  ::usleep(20000);
  auto maps = ck::read_maps(child);
  auto smaps = ck::read_smaps(child);
  ::kill(child, SIGKILL);
  ::waitpid(child, nullptr, 0);
  ASSERT_EQ(maps.size(), smaps.size());
  for (std::size_t i = 0; i < maps.size(); ++i) {
    EXPECT_EQ(maps[i].start, smaps[i].start);
    EXPECT_FALSE(smaps[i].vmflags.empty()) << smaps[i].path;
  }
  bool stack = false;
  for (auto& m : smaps)
    if (m.path == "[stack]") {
      stack = true;
      EXPECT_NE(std::find(m.vmflags.begin(), m.vmflags.end(), "gd"), m.vmflags.end());
    }
  EXPECT_TRUE(stack);
}

TEST(Proc, MissingFileNamesThePath) {
  try {
    ck::read_file("/proc/does-not-exist/status");
    FAIL() << "no error";
  } catch (const fsched::Error& e) {
    EXPECT_NE(std::string(e.what()).find("/proc/does-not-exist/status"), std::string::npos);
    EXPECT_EQ(e.err(), ENOENT);
  }
}

TEST(SyscallRestart, ReRunsInterruptedSyscalls) {
  user_regs_struct r{};
  r.orig_rax = SYS_read;
  r.rax = static_cast<unsigned long long>(-512);  // -ERESTARTSYS
  r.rip = 0x1002;
  ck::fixup_syscall_restart(r, true);
  EXPECT_EQ(r.rax, static_cast<unsigned long long>(SYS_read));
  EXPECT_EQ(r.rip, 0x1000u);
  EXPECT_EQ(static_cast<long long>(r.orig_rax), -1);

  user_regs_struct n{};
  n.orig_rax = SYS_nanosleep;
  n.rax = static_cast<unsigned long long>(-516);  // -ERESTART_RESTARTBLOCK
  n.rip = 0x2002;
  user_regs_struct same = n;
  ck::fixup_syscall_restart(same, true);
  EXPECT_EQ(same.rax, static_cast<unsigned long long>(SYS_restart_syscall));
  ck::fixup_syscall_restart(n, false);
  EXPECT_EQ(n.rax, static_cast<unsigned long long>(SYS_nanosleep));
  EXPECT_EQ(n.rip, 0x2000u);

  user_regs_struct done{};
  done.orig_rax = SYS_write;
  done.rax = 5;
  done.rip = 0x3002;
  ck::fixup_syscall_restart(done, false);
  EXPECT_EQ(done.rax, 5u);
  EXPECT_EQ(done.rip, 0x3002u);
}

TEST(Manifest, JsonRoundTrip) {
  ck::Manifest m;
  m.kernel = "6.18";
  m.xfeatures = 7;
  ck::Process p;
  p.pid = 1;
  p.exe = "/bin/true";
  ck::Vma v;
  v.start = 0x1000;
  v.end = 0x3000;
  v.kind = ck::VmaKind::kAnon;
  v.runs = {{0, 2}};
  p.vmas.push_back(v);
  ck::Thread t;
  t.tid = 1;
  t.regs = {1, 2, 3};
  p.threads.push_back(t);
  m.processes.push_back(p);
  m.pipes.push_back({42, 65536, 10});
  nlohmann::json j = m;
  auto back = nlohmann::json::parse(j.dump()).get<ck::Manifest>();
  ASSERT_EQ(back.processes.size(), 1u);
  EXPECT_EQ(back.processes[0].vmas[0].runs, v.runs);
  EXPECT_EQ(back.processes[0].threads[0].regs, t.regs);
  EXPECT_EQ(back.pipes[0].capacity, 65536u);
  EXPECT_EQ(back.kernel, "6.18");
}

// A mapping's runs are a base64 string of LEB128 numbers (format 10); arrays, as
// formats 3 to 9 wrote them, are still read.
TEST(Manifest, PageRunsRoundTripAsAString) {
  ck::PageRuns runs;
  std::uint64_t at = 0;
  for (std::uint64_t i = 0; i < 5000; ++i) {
    at += i % 7 * 300 + (i % 3);
    runs.emplace_back(at, 1 + i % 129);
    at += 1 + i % 129;
  }
  runs.emplace_back(1ULL << 40, 3);
  runs.emplace_back(~0ULL - 10, 10);  // ends at the last page number there is
  nlohmann::json j = runs;
  ASSERT_TRUE(j.is_string());
  EXPECT_LT(j.get_ref<const std::string&>().size(), 5000u * 6);
  EXPECT_EQ(nlohmann::json::parse(j.dump()).get<ck::PageRuns>(), runs);
  EXPECT_EQ(nlohmann::json(ck::PageRuns{}).get<ck::PageRuns>(), ck::PageRuns{});
  EXPECT_EQ(nlohmann::json::parse("[[3, 1], [9, 2]]").get<ck::PageRuns>(),
            (ck::PageRuns{{3, 1}, {9, 2}}));
  // Out of order (no dump makes them): kept as they are, in the older form.
  ck::PageRuns odd{{9, 2}, {3, 1}};
  nlohmann::json oj = odd;
  EXPECT_TRUE(oj.is_array());
  EXPECT_EQ(oj.get<ck::PageRuns>(), odd);
}

TEST(Manifest, MalformedPageRunsAreRefused) {
  using ::testing::HasSubstr;
  auto error_of = [](const nlohmann::json& j) -> std::string {
    try {
      j.get<ck::PageRuns>();
    } catch (const nlohmann::json::type_error& e) {
      return e.what();
    }
    return "accepted";
  };
  EXPECT_THAT(error_of("abc"), HasSubstr("multiple of 4"));
  EXPECT_THAT(error_of("a!c="), HasSubstr("not base64"));
  EXPECT_THAT(error_of("gA=="), HasSubstr("truncated number"));  // 0x80: continues
  EXPECT_THAT(error_of("AQ=="), HasSubstr("truncated number"));  // a first page, no count
  // ten bytes 0xff then 0x01: more than 64 bits
  EXPECT_THAT(error_of("/////////////wE="), HasSubstr("longer than 64 bits"));
  EXPECT_THAT(error_of(12), HasSubstr("neither a string nor an array"));
  EXPECT_EQ(error_of(nlohmann::json(ck::PageRuns{{~0ULL - 1, 1}})), "accepted");
  // A run from page 2^64 - 1 of 1 page: it would end past 2^64.
  EXPECT_THAT(error_of("////////////AQE="), HasSubstr("past 2^64"));
}

TEST(Manifest, Hex) {
  const unsigned char b[] = {0, 1, 0xab, 0xff};
  auto h = ck::to_hex(b, sizeof b);
  EXPECT_EQ(h, "0001abff");
  auto back = ck::from_hex(h);
  EXPECT_EQ(back, (std::vector<std::uint8_t>{0, 1, 0xab, 0xff}));
  EXPECT_THROW(ck::from_hex("abc"), fsched::Error);
  EXPECT_THROW(ck::from_hex("zz"), fsched::Error);
}

// A real child stopped with ptrace; a syscall injected into it returns its PID and
// the child then continues to exit normally.
TEST(Inject, GetpidInChildThenContinue) {
  int pfd[2];
  ASSERT_EQ(::pipe(pfd), 0);
  pid_t child = ::fork();
  if (child == 0) {
    ::close(pfd[0]);
    char c = 0;
    for (int i = 0; i < 200; ++i) ::usleep(5000);
    ::write(pfd[1], &c, 1);
    ::_exit(7);
  }
  ::close(pfd[1]);
  ck::seize_and_stop(child, ck::kSeizeOptions);
  {
    ck::Injector inj(child, ck::local_syscall_gadget());
    EXPECT_EQ(inj.call(SYS_getpid), child);
    EXPECT_EQ(inj.call(SYS_getppid), ::getpid());
    EXPECT_LT(inj.call(SYS_close, 12345), 0);  // EBADF comes back as a negative result
    EXPECT_THROW(inj.call_ok("close of a bad fd", SYS_close, 12345), fsched::Error);
  }  // registers put back
  ASSERT_EQ(::ptrace(PTRACE_DETACH, child, nullptr, nullptr), 0);
  char c;
  EXPECT_EQ(::read(pfd[0], &c, 1), 1);
  int st = 0;
  ASSERT_EQ(::waitpid(child, &st, 0), child);
  ASSERT_TRUE(WIFEXITED(st));
  EXPECT_EQ(WEXITSTATUS(st), 7);
}
