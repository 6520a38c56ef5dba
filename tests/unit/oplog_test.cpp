// fschedd's operation records (src/noded/oplog.h): durable, private, exclusive.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>

#include <gtest/gtest.h>

#include "noded/oplog.h"

namespace fs = std::filesystem;
using namespace fsched::noded;

namespace {

struct TempDir {
  fs::path path;
  TempDir() {
    char tmpl[] = "/tmp/oplog_test.XXXXXX";
    path = ::mkdtemp(tmpl);
  }
  ~TempDir() { fs::remove_all(path); }
};

mode_t mode_of(const fs::path& p) {
  struct stat st {};
  EXPECT_EQ(::lstat(p.c_str(), &st), 0) << p;
  return st.st_mode & 07777;
}

}  // namespace

TEST(OpLog, RecordsArePrivateAndRoundTrip) {
  TempDir t;
  OpLog log(t.path / "ops");
  EXPECT_EQ(mode_of(log.dir()), 0700u);
  OpRecord r{.job_id = 7,
             .kind = OpKind::Vacate,
             .node = "node1",
             .image_dir = "/ckpt/7/3",
             .timeout_s = 60,
             .started = 12.5};
  log.put(r);
  EXPECT_EQ(mode_of(log.record_path(7)), 0600u);
  EXPECT_FALSE(fs::exists(fs::path(log.record_path(7)) += ".tmp"));
  r.phase = OpPhase::Done;
  r.outcome = OpOutcome::Ok;
  r.size = 4096;
  log.put(r);
  auto all = log.load();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].kind, OpKind::Vacate);
  EXPECT_EQ(all[0].phase, OpPhase::Done);
  EXPECT_EQ(all[0].outcome, OpOutcome::Ok);
  EXPECT_EQ(all[0].image_dir, "/ckpt/7/3");
  EXPECT_EQ(all[0].size, 4096u);
  EXPECT_EQ(all[0].report().at("kind"), "vacate");
  log.remove(7);
  EXPECT_TRUE(log.load().empty());
}

TEST(OpLog, UnreadableRecordsAreSkipped) {
  TempDir t;
  OpLog log(t.path / "ops");
  std::ofstream(log.dir() / "job9.op.json") << "{not json";
  log.put(OpRecord{.job_id = 3});
  auto all = log.load();
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].job_id, 3);
}

TEST(OpLog, LockIsExclusiveUntilReleased) {
  TempDir t;
  OpLog log(t.path / "ops");
  auto first = log.try_lock(5);
  ASSERT_TRUE(first);
  EXPECT_FALSE(log.try_lock(5)) << "a second runner must not start while the first holds the lock";
  EXPECT_TRUE(log.try_lock(6));
  first.reset();
  EXPECT_TRUE(log.try_lock(5));
}

TEST(OpLog, ResultMissingOrCorruptIsNone) {
  TempDir t;
  OpLog log(t.path / "ops");
  EXPECT_FALSE(log.result(1));
  std::ofstream(log.result_path(1)) << "garbage";
  EXPECT_FALSE(log.result(1));
  write_durably(log.result_path(1),
                nlohmann::json(RunnerResult{.exit_code = 3, .error_line = "boom"}).dump(), 0600);
  auto r = log.result(1);
  ASSERT_TRUE(r);
  EXPECT_EQ(r->exit_code, 3);
  EXPECT_EQ(r->error_line, "boom");
}
