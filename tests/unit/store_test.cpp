// The controller's SQLite store: what is written is what a restarted controller reads.
#include <gtest/gtest.h>

#include <sqlite3.h>
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
    s.submit(j, "#!/bin/bash\necho hi\n", {{"HOME", "/home/alice"}}, [](fsched::ctld::Job& x) {
      x.stdout_path = "/o/slurm-" + std::to_string(x.job_id) + ".out";
    });
    first = j.job_id;
    fsched::ctld::Job k;
    s.submit(k, "#!/bin/sh\n", nlohmann::json::object(), [](fsched::ctld::Job&) {});
    second = k.job_id;
    j.state = fsched::ctld::JobState::Running;
    j.nodes = "n1";
    s.put_job(j);
    fsched::ctld::Checkpoint c;
    c.job_id = first;
    c.checkpoint_id = 1;
    c.status = fsched::ctld::CheckpointStatus::Present;
    c.source = fsched::ctld::CheckpointSource::Vacate;
    c.size = 12345;
    c.location = "/ckpt/1/1";
    s.put_checkpoint(c);
  }
  EXPECT_EQ(second, first + 1);
  fsched::ctld::Store s(t.path);
  auto jobs = s.jobs();
  ASSERT_EQ(jobs.size(), 2u);
  EXPECT_EQ(jobs[0].job_id, first);
  EXPECT_EQ(jobs[0].state, fsched::ctld::JobState::Running);
  EXPECT_EQ(jobs[0].nodes, "n1");
  EXPECT_EQ(jobs[0].stdout_path, "/o/slurm-" + std::to_string(first) + ".out");
  EXPECT_EQ(jobs[0].argv, (std::vector<std::string>{"x", "y z"}));
  EXPECT_EQ(jobs[0].checkpoint_interval, 300);
  auto [script, env] = s.script(first);
  EXPECT_EQ(script, "#!/bin/bash\necho hi\n");
  EXPECT_EQ(env["HOME"], "/home/alice");
  auto cks = s.checkpoints();
  ASSERT_EQ(cks.size(), 1u);
  EXPECT_EQ(cks[0].status, fsched::ctld::CheckpointStatus::Present);
  EXPECT_EQ(cks[0].source, fsched::ctld::CheckpointSource::Vacate);
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

namespace {
// Runs sql on the store's database directly, as another program (or an older
// controller) would; returns the first column of the first row, "" if none.
std::string sql_text(const std::filesystem::path& dir, const std::string& sql) {
  sqlite3* db = nullptr;
  EXPECT_EQ(sqlite3_open((dir / "fsched.db").c_str(), &db), SQLITE_OK);
  sqlite3_stmt* st = nullptr;
  EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &st, nullptr), SQLITE_OK) << sqlite3_errmsg(db);
  std::string out;
  if (sqlite3_step(st) == SQLITE_ROW && sqlite3_column_text(st, 0))
    out = reinterpret_cast<const char*>(sqlite3_column_text(st, 0));
  sqlite3_finalize(st);
  sqlite3_close(db);
  return out;
}
}  // namespace

// The enum classes are stored under the names the rows always had, so that a database
// written before them (or by them) reads the same.
TEST(Store, StatesAreStoredByTheirNames) {
  TempDir t;
  int64_t id = 0;
  {
    fsched::ctld::Store s(t.path);
    fsched::ctld::Job j;
    s.submit(j, "#!/bin/sh\n", nlohmann::json::object(), [](fsched::ctld::Job&) {});
    id = j.job_id;
    j.state = fsched::ctld::JobState::NodeFail;
    s.put_job(j);
    fsched::ctld::Checkpoint c;
    c.job_id = id;
    c.checkpoint_id = 2;
    c.status = fsched::ctld::CheckpointStatus::Skipped;
    c.source = fsched::ctld::CheckpointSource::Periodic;
    s.put_checkpoint(c);
  }
  EXPECT_EQ(sql_text(t.path, "SELECT state FROM jobs"), "NODE_FAIL");
  EXPECT_EQ(sql_text(t.path, "SELECT json_extract(data, '$.state') FROM jobs"), "NODE_FAIL");
  EXPECT_EQ(sql_text(t.path, "SELECT status FROM checkpoints"), "Skipped");
  EXPECT_EQ(
      sql_text(t.path,
               "SELECT json_extract(data, '$.status') || ' ' || json_extract(data, '$.source') "
               "FROM checkpoints"),
      "Skipped periodic");
}

// A row with a state this controller does not know (a newer controller's, a damaged
// file) stops the load with a message naming it: taking it for PENDING (what
// NLOHMANN_JSON_SERIALIZE_ENUM would do) could start a finished job again.
TEST(Store, UnknownStateInARowIsAClearError) {
  TempDir t;
  {
    fsched::ctld::Store s(t.path);
    fsched::ctld::Job j;
    s.submit(j, "#!/bin/sh\n", nlohmann::json::object(), [](fsched::ctld::Job&) {});
    fsched::ctld::Checkpoint c;
    c.job_id = j.job_id;
    c.checkpoint_id = 1;
    s.put_checkpoint(c);
  }
  sql_text(t.path, "UPDATE jobs SET data = json_set(data, '$.state', 'PREEMPTED')");
  sql_text(t.path, "UPDATE checkpoints SET data = json_set(data, '$.status', 'Archived')");
  fsched::ctld::Store s(t.path);
  try {
    s.jobs();
    FAIL() << "expected an error";
  } catch (const fsched::Error& e) {
    std::string what = e.what();
    EXPECT_NE(what.find("fsched.db"), std::string::npos) << what;
    EXPECT_NE(what.find("unknown job state \"PREEMPTED\""), std::string::npos) << what;
    EXPECT_NE(what.find("PENDING, RUNNING"), std::string::npos) << what;
  }
  try {
    s.checkpoints();
    FAIL() << "expected an error";
  } catch (const fsched::Error& e) {
    EXPECT_NE(std::string(e.what()).find("unknown checkpoint status \"Archived\""),
              std::string::npos)
        << e.what();
  }
}
