// sbatch's option model: #SBATCH lines, command-line precedence, defaults and the
// submit request of docs/scheduler.md.
#include <algorithm>

#include <gtest/gtest.h>

#include <CLI/CLI.hpp>

#include "cmds/cmd_common.h"
#include "cmds/sbatch_opts.h"
#include "common/error.h"

namespace cmds = fsched::cmds;
using nlohmann::json;

namespace {

// Parses args with `script` as the text of whatever script they name (or stdin).
cmds::SbatchOptions parse(std::vector<std::string> args, const std::string& script,
                          std::string* asked_for = nullptr) {
  return cmds::parse_sbatch(args, [&](const std::string& path) {
    if (asked_for) *asked_for = path;
    return script;
  });
}

json request(const cmds::SbatchOptions& o, std::map<std::string, std::string> env = {}) {
  return cmds::submit_request(o, "/home/alice/work", env);
}

const std::string kPlain = "#!/bin/bash\necho hi\n";

}  // namespace

TEST(SplitWords, LikeAShell) {
  using V = std::vector<std::string>;
  EXPECT_EQ(cmds::split_words("  -J  foo\t--mem=4G "), (V{"-J", "foo", "--mem=4G"}));
  EXPECT_EQ(cmds::split_words("-J 'my job' --output=\"a b.out\""),
            (V{"-J", "my job", "--output=a b.out"}));
  EXPECT_EQ(cmds::split_words(R"(-J a\ b "q\"x" 'l\n')"), (V{"-J", "a b", "q\"x", "l\\n"}));
  EXPECT_EQ(cmds::split_words("-t 10 # ten minutes"), (V{"-t", "10"}));
  EXPECT_EQ(cmds::split_words("-J a#b"), (V{"-J", "a#b"}));  // '#' inside a word stays
  EXPECT_EQ(cmds::split_words("''"), (V{""}));
  EXPECT_TRUE(cmds::split_words("   ").empty());
  EXPECT_THROW(cmds::split_words("-J 'open"), fsched::Error);
  EXPECT_THROW(cmds::split_words("-J \"open"), fsched::Error);
}

TEST(SbatchDirectives, StopAtTheFirstCommand) {
  auto d = cmds::sbatch_directives(
      "#!/bin/bash\n"
      "#SBATCH -J first\n"
      "\n"
      "# a comment\n"
      "##SBATCH -J disabled\n"
      "#SBATCHX -J not-a-directive\n"
      "#SBATCH --time=10 --mem=1G\n"
      "echo start\n"
      "#SBATCH -J too-late\n");
  ASSERT_EQ(d.size(), 2u);
  EXPECT_EQ(d[0].first, 2);
  EXPECT_EQ(d[0].second, (std::vector<std::string>{"-J", "first"}));
  EXPECT_EQ(d[1].first, 7);
  EXPECT_EQ(d[1].second, (std::vector<std::string>{"--time=10", "--mem=1G"}));
}

TEST(ParseSbatch, ScriptAndItsArguments) {
  std::string path;
  auto o = parse({"-J", "x", "job.sh", "-J", "arg", "--", "more"}, kPlain, &path);
  EXPECT_EQ(path, "job.sh");
  EXPECT_EQ(o.script_path, "job.sh");
  EXPECT_EQ(o.job_name, "x");
  EXPECT_EQ(o.script_args, (std::vector<std::string>{"-J", "arg", "--", "more"}));
  EXPECT_EQ(o.script, kPlain);
}

TEST(ParseSbatch, StdinWhenNoScript) {
  std::string path = "unset";
  auto o = parse({"--parsable"}, kPlain, &path);
  EXPECT_EQ(path, "");
  EXPECT_TRUE(o.parsable);
  EXPECT_EQ(request(o)["name"], "sbatch");
}

TEST(ParseSbatch, DirectivesAndCommandLinePrecedence) {
  const std::string script =
      "#!/bin/bash\n"
      "#SBATCH --job-name=fromscript\n"
      "#SBATCH -t 30:00\n"
      "#SBATCH --checkpoint=5:00 --mem 2G\n"
      "#SBATCH -c 2 -n 3\n"
      "#SBATCH --no-requeue\n"
      "#SBATCH -o 'out dir/%x-%j.log'\n"
      "#SBATCH --partition debug\n"
      "srun hostname\n";
  auto o = parse({"-J", "fromcli", "--mem=100", "-c4", "job.sh"}, script);
  EXPECT_EQ(o.job_name, "fromcli");  // command line wins
  EXPECT_EQ(o.mem, "100");           // command line wins
  EXPECT_EQ(o.cpus_per_task, 4);     // command line wins
  EXPECT_EQ(o.ntasks, 3);            // from the script
  EXPECT_EQ(o.time, "30:00");
  EXPECT_EQ(o.checkpoint, "5:00");
  EXPECT_FALSE(o.requeue);
  EXPECT_EQ(o.output, "out dir/%x-%j.log");
  EXPECT_EQ(o.partition, "debug");

  auto r = request(o);
  EXPECT_EQ(r["name"], "fromcli");
  EXPECT_EQ(r["mem_mb"], 100);
  EXPECT_EQ(r["cpus_per_task"], 4);
  EXPECT_EQ(r["ntasks"], 3);
  EXPECT_EQ(r["time_limit"], 1800);
  EXPECT_EQ(r["checkpoint_interval"], 300);
  EXPECT_EQ(r["requeue"], false);
  EXPECT_EQ(r["stdout"], "/home/alice/work/out dir/%x-%j.log");
  EXPECT_EQ(r["partition"], "debug");
}

TEST(ParseSbatch, CommandLineRequeueOverridesScript) {
  auto o = parse({"--requeue", "j.sh"}, "#!/bin/sh\n#SBATCH --no-requeue\ntrue\n");
  EXPECT_TRUE(o.requeue);
  auto h = parse({"j.sh"}, "#!/bin/sh\n#SBATCH -H\ntrue\n");
  EXPECT_TRUE(h.hold);
  EXPECT_EQ(request(h)["hold"], true);
}

TEST(ParseSbatch, DirectivesAfterTheFirstCommandAreIgnored) {
  auto o = parse({"j.sh"}, "#!/bin/sh\necho hi\n#SBATCH -J late\n");
  EXPECT_EQ(o.job_name, "");
  EXPECT_EQ(request(o)["name"], "j.sh");
}

TEST(ParseSbatch, BadDirectiveNamesTheLine) {
  try {
    parse({"job.sh"}, "#!/bin/sh\n#SBATCH -J ok\n#SBATCH --bogus=1\ntrue\n");
    FAIL() << "no throw";
  } catch (const fsched::Error& e) {
    std::string m = e.what();
    EXPECT_NE(m.find("job.sh:3:"), std::string::npos) << m;
    EXPECT_NE(m.find("--bogus"), std::string::npos) << m;
  }
  EXPECT_THROW(parse({"job.sh"}, "#!/bin/sh\n#SBATCH stray\ntrue\n"), fsched::Error);
  EXPECT_THROW(parse({"job.sh"}, "#!/bin/sh\n#SBATCH -c zero\ntrue\n"), fsched::Error);
}

TEST(ParseSbatch, BadCommandLine) {
  EXPECT_THROW(parse({"--bogus", "job.sh"}, kPlain), fsched::Error);
  EXPECT_THROW(parse({"-c", "0", "job.sh"}, kPlain), CLI::ParseError);
  EXPECT_THROW(parse({"-c", "x", "job.sh"}, kPlain), CLI::ParseError);
  EXPECT_THROW(parse({"--requeue", "--no-requeue", "job.sh"}, kPlain), CLI::ParseError);
  EXPECT_EQ(parse({"job.sh", "-J"}, kPlain).script_args, std::vector<std::string>{"-J"});
  try {
    parse({"--help"}, kPlain);
    FAIL() << "no throw";
  } catch (const CLI::ParseError& e) {
    EXPECT_EQ(e.get_exit_code(), 0);  // help
  }
}

TEST(ParseSbatch, ScriptMustLookLikeOne) {
  EXPECT_THROW(parse({"j.sh"}, ""), fsched::Error);
  EXPECT_THROW(parse({"j.sh"}, "\n\n"), fsched::Error);
  EXPECT_THROW(parse({"j.sh"}, "echo hi\n"), fsched::Error);
  EXPECT_THROW(parse({"j.sh"}, "#!/bin/sh\r\necho hi\r\n"), fsched::Error);
}

TEST(ParseSbatch, Wrap) {
  auto o = parse({"--wrap", "sleep 100"}, "");
  EXPECT_EQ(o.script.substr(0, 10), "#!/bin/sh\n");
  EXPECT_NE(o.script.find("\nsleep 100\n"), std::string::npos);
  EXPECT_EQ(request(o)["name"], "wrap");
  EXPECT_THROW(parse({"--wrap", "true", "job.sh"}, kPlain), fsched::Error);
}

TEST(SubmitRequest, Defaults) {
  auto o = parse({"/abs/path/job.sh", "a1"}, kPlain);
  auto r = request(o, {{"PATH", "/bin"}, {"HOME", "/home/alice"}});
  EXPECT_EQ(r["script"], kPlain);
  EXPECT_EQ(r["argv"], json::array({"a1"}));
  EXPECT_EQ(r["env"], json({{"PATH", "/bin"}, {"HOME", "/home/alice"}}));
  EXPECT_EQ(r["name"], "job.sh");
  EXPECT_EQ(r["work_dir"], "/home/alice/work");
  EXPECT_EQ(r["stdout"], "/home/alice/work/slurm-%j.out");
  EXPECT_EQ(r["stderr"], "");
  EXPECT_EQ(r["partition"], "");
  EXPECT_EQ(r["cpus_per_task"], 1);
  EXPECT_EQ(r["ntasks"], 1);
  EXPECT_EQ(r["mem_mb"], 0);
  EXPECT_EQ(r["time_limit"], 0);
  EXPECT_EQ(r["checkpoint_interval"], 0);
  EXPECT_EQ(r["requeue"], true);
  EXPECT_EQ(r["hold"], false);
  EXPECT_EQ(r["num_retained"], 0);
  // Exactly the documented keys.
  EXPECT_EQ(r.size(), 16u);
  EXPECT_EQ(request(parse({"--num-retained=3", "j.sh"}, kPlain))["num_retained"], 3);
  EXPECT_THROW(parse({"--num-retained=-1", "j.sh"}, kPlain), std::exception);
}

TEST(SubmitRequest, PathsAreMadeAbsoluteAgainstTheWorkDir) {
  auto o = parse({"-D", "sub/../run", "-o", "logs/%j.out", "-e", "/tmp/err-%x", "j.sh"}, kPlain);
  auto r = request(o);
  EXPECT_EQ(r["work_dir"], "/home/alice/work/run");
  EXPECT_EQ(r["stdout"], "/home/alice/work/run/logs/%j.out");
  EXPECT_EQ(r["stderr"], "/tmp/err-%x");

  auto abs = request(parse({"--chdir=/scratch", "j.sh"}, kPlain));
  EXPECT_EQ(abs["work_dir"], "/scratch");
  EXPECT_EQ(abs["stdout"], "/scratch/slurm-%j.out");
}

TEST(SubmitRequest, TimeLimitAndCheckpointFormats) {
  auto t = [](const std::string& time) {
    return request(parse({"-t", time, "j.sh"}, kPlain))["time_limit"].get<int64_t>();
  };
  EXPECT_EQ(t("10"), 600);
  EXPECT_EQ(t("1-0"), 86400);
  EXPECT_EQ(t("UNLIMITED"), 0);
  EXPECT_EQ(t("infinite"), 0);
  auto c = [](const std::string& every) {
    return request(parse({"--checkpoint=" + every, "j.sh"}, kPlain))["checkpoint_interval"]
        .get<int64_t>();
  };
  EXPECT_EQ(c("30"), 1800);
  EXPECT_EQ(c("30:00"), 1800);
  EXPECT_EQ(c("2:30:00"), 9000);
  EXPECT_EQ(c("1-0"), 86400);
  EXPECT_EQ(c("1-0:30"), 88200);
  EXPECT_EQ(c("1-2:30:00"), 95400);
  EXPECT_THROW(c("UNLIMITED"), fsched::Error);
  EXPECT_THROW(c("often"), fsched::Error);
  EXPECT_THROW(t("1:2:3:4"), fsched::Error);
}

TEST(SubmitRequest, Memory) {
  EXPECT_EQ(cmds::parse_mem_mb("100"), 100);
  EXPECT_EQ(cmds::parse_mem_mb("100M"), 100);
  EXPECT_EQ(cmds::parse_mem_mb("4G"), 4096);
  EXPECT_EQ(cmds::parse_mem_mb("4g"), 4096);
  EXPECT_EQ(cmds::parse_mem_mb("1T"), 1048576);
  EXPECT_EQ(cmds::parse_mem_mb("2048K"), 2);
  EXPECT_EQ(cmds::parse_mem_mb("1K"), 1);  // rounded up
  EXPECT_EQ(cmds::parse_mem_mb("0"), 0);
  for (const char* bad : {"", "G", "-1", "1.5G", "4X", "4GB", "4 G", "1234567890123"})
    EXPECT_THROW(cmds::parse_mem_mb(bad), fsched::Error) << bad;
  EXPECT_EQ(request(parse({"--mem=3G", "j.sh"}, kPlain))["mem_mb"], 3072);
}

TEST(SubmitRequest, SingleNodeOnly) {
  EXPECT_NO_THROW(request(parse({"-N", "1", "j.sh"}, kPlain)));
  EXPECT_THROW(request(parse({"-N", "2", "j.sh"}, kPlain)), fsched::Error);
}

TEST(Common, JobIds) {
  EXPECT_EQ(cmds::parse_job_id("12"), 12);
  for (const char* bad : {"", "0", "-3", "12x", "x", "1.0", " 1", "99999999999999999999"})
    EXPECT_THROW(cmds::parse_job_id(bad), fsched::Error) << bad;
  try {
    cmds::parse_job_id("abc");
  } catch (const fsched::Error& e) {
    EXPECT_STREQ(e.what(), "Invalid job id specified: abc");
  }
  EXPECT_EQ(cmds::parse_job_ids("3,4,,5"), (std::vector<int64_t>{3, 4, 5}));
  EXPECT_THROW(cmds::parse_job_ids(","), fsched::Error);
}

TEST(Common, Signals) {
  EXPECT_EQ(cmds::parse_signal("TERM"), 15);
  EXPECT_EQ(cmds::parse_signal("SIGTERM"), 15);
  EXPECT_EQ(cmds::parse_signal("sigusr1"), 10);
  EXPECT_EQ(cmds::parse_signal("KILL"), 9);
  EXPECT_EQ(cmds::parse_signal("9"), 9);
  EXPECT_EQ(cmds::parse_signal("0"), 0);
  for (const char* bad : {"", "SIG", "BOGUS", "-1", "999", "TERM1"})
    EXPECT_THROW(cmds::parse_signal(bad), fsched::Error) << bad;
}

TEST(Common, Users) {
  EXPECT_EQ(cmds::user_id("root"), 0u);
  EXPECT_EQ(cmds::user_id("0"), 0u);
  EXPECT_EQ(cmds::user_name(0), "root");
  EXPECT_EQ(cmds::group_name(0), "root");
  EXPECT_EQ(cmds::user_name(4000000000u), "4000000000");
  EXPECT_THROW(cmds::user_id("no-such-user-xyz"), fsched::Error);
}

TEST(Common, RunPrintsOneErrorLine) {
  CLI::App app{"t", "t"};
  testing::internal::CaptureStderr();
  int rc = cmds::run("squeue", app, []() -> int { fsched::fail("first\nsecond"); });
  EXPECT_EQ(rc, 1);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "squeue: error: first second\n");

  testing::internal::CaptureStderr();
  rc = cmds::run("scontrol", app,
                 []() -> int { throw fsched::proto::RpcError(404, "Invalid job id specified"); });
  EXPECT_EQ(rc, 1);
  EXPECT_EQ(testing::internal::GetCapturedStderr(), "scontrol: error: Invalid job id specified\n");

  EXPECT_EQ(cmds::run("x", app, [] { return 3; }), 3);
}

TEST(Common, RunHelpAndParseErrors) {
  CLI::App app{"t", "t"};
  int n = 0;
  app.add_option("-n", n);
  testing::internal::CaptureStdout();
  const char* help[] = {"t", "--help"};
  EXPECT_EQ(cmds::run("t", app,
                      [&] {
                        app.parse(2, help);
                        return 0;
                      }),
            0);
  EXPECT_NE(testing::internal::GetCapturedStdout().find("-n"), std::string::npos);

  testing::internal::CaptureStderr();
  const char* bad[] = {"t", "-n", "x"};
  EXPECT_EQ(cmds::run("t", app,
                      [&] {
                        app.parse(3, bad);
                        return 0;
                      }),
            1);
  std::string err = testing::internal::GetCapturedStderr();
  EXPECT_EQ(err.rfind("t: error: ", 0), 0u) << err;
  EXPECT_EQ(std::count(err.begin(), err.end(), '\n'), 1) << err;
}
