// The controller's SQLite store: what is written is what a restarted controller reads.
#include <gtest/gtest.h>

#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "common/error.h"
#include "ctld/store.h"

namespace {

struct TempDir {
  std::filesystem::path path;
  TempDir() {
    char tmpl[] = "/tmp/fsched-store-XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
};

}  // namespace

TEST(Store, JobsScriptsAndCheckpointsSurviveReopening) {
  TempDir t;
  int64_t first = 0, second = 0;
  {
    fsched::ctld::Store s(t.path);
    fsched::ctld::Job j;
    j.name = "a";
    j.user = "alice";
    j.argv = {"x", "y z"};
    j.checkpoint_interval = 300;
    s.submit(j, "#!/bin/bash\necho hi\n", {{"HOME", "/home/alice"}},
             [](fsched::ctld::Job& x) { x.stdout_path = "/o/slurm-" + std::to_string(x.job_id) + ".out"; });
    first = j.job_id;
    fsched::ctld::Job k;
    s.submit(k, "#!/bin/sh\n", nlohmann::json::object(), [](fsched::ctld::Job&) {});
    second = k.job_id;
    j.state = "RUNNING";
    j.nodes = "n1";
    s.put_job(j);
    fsched::ctld::Checkpoint c;
    c.job_id = first;
    c.checkpoint_id = 1;
    c.status = "Present";
    c.size = 12345;
    c.location = "/ckpt/1/1";
    s.put_checkpoint(c);
  }
  EXPECT_EQ(second, first + 1);
  fsched::ctld::Store s(t.path);
  auto jobs = s.jobs();
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].job_id, first);
  EXPECT_EQ(jobs[0].state, "RUNNING");
  EXPECT_EQ(jobs[0].nodes, "n1");
  EXPECT_EQ(jobs[0].stdout_path, "/o/slurm-" + std::to_string(first) + ".out");
  EXPECT_EQ(jobs[0].argv, (std::vector<std::string>{"x", "y z"}));
  EXPECT_EQ(jobs[0].checkpoint_interval, 300);
  auto [script, env] = s.script(first);
  EXPECT_EQ(script, "#!/bin/bash\necho hi\n");
  EXPECT_EQ(env["HOME"], "/home/alice");
  auto cks = s.checkpoints();
  ASSERT_EQ(cks.size(), 1u);
  EXPECT_EQ(cks[0].status, "Present");
  EXPECT_EQ(cks[0].size, 12345u);
  // Ids are never reused, even after a restart.
  fsched::ctld::Job n;
  s.submit(n, "#!/bin/sh\n", nlohmann::json::object(), [](fsched::ctld::Job&) {});
  EXPECT_EQ(n.job_id, second + 1);
  EXPECT_THROW(s.script(999999), fsched::Error);
}

TEST(Store, UnusableLocationIsAClearError) {
  TempDir t;
  auto file = t.path / "file";
  { std::ofstream(file) << "x"; }
  try {
    fsched::ctld::Store s(file / "state");
    FAIL() << "expected an error";
  } catch (const fsched::Error& e) {
    EXPECT_NE(std::string(e.what()).find("StateSaveLocation"), std::string::npos) << e.what();
  }
}
