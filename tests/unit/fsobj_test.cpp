// Unit tests of the pure parts of the engine's support for file-system objects:
// inotify fdinfo parsing, keys of deleted files, and their manifest fields.
#include <sys/sysmacros.h>

#include <gtest/gtest.h>

#include "ckpt/manifest.h"
#include "ckpt/deleted.h"
#include "ckpt/inotify.h"
#include "common/error.h"

namespace ck = fsched::ckpt;

TEST(InotifyFdinfo, ParsesWatchesInWdOrder) {
  // As fs/notify/fdinfo.c prints them: every number in hex (wd 0x1a = 26).
  const std::string info =
      "pos:\t0\nflags:\t02004000\nmnt_id:\t17\nino:\t1036\n"
      "inotify wd:1a ino:63efa sdev:fe00000 mask:84000fff ignored_mask:0 fhandle-bytes:8 "
      "fhandle-type:1 f_handle:fa3e060000000000\n"
      "inotify wd:1 ino:3c51a sdev:fe00001 mask:300 ignored_mask:0 fhandle-bytes:8 "
      "fhandle-type:81 f_handle:1ac5030000000000\n";
  auto w = ck::parse_inotify_fdinfo(info);
  ASSERT_EQ(w.size(), 2u);
  EXPECT_EQ(w[0].wd, 1);
  EXPECT_EQ(w[0].ino, 0x3c51aU);
  EXPECT_EQ(w[0].sdev, 0xfe00001U);
  EXPECT_EQ(w[0].mask, 0x300U);
  EXPECT_EQ(w[0].handle_type, 0x81);
  EXPECT_EQ(w[0].handle_hex, "1ac5030000000000");
  EXPECT_EQ(w[1].wd, 26);
  EXPECT_EQ(w[1].mask, 0x84000fffU);
}

TEST(InotifyFdinfo, NoWatchesAndNoHandle) {
  EXPECT_TRUE(ck::parse_inotify_fdinfo("pos:\t0\nflags:\t00\nmnt_id:\t17\nino:\t1\n").empty());
  // A file system without file handles: the line ends after ignored_mask.
  auto w = ck::parse_inotify_fdinfo("inotify wd:3 ino:2 sdev:5 mask:2 ignored_mask:0\n");
  ASSERT_EQ(w.size(), 1u);
  EXPECT_EQ(w[0].wd, 3);
  EXPECT_TRUE(w[0].handle_hex.empty());
}

TEST(InotifyFdinfo, RejectsMalformedLines) {
  EXPECT_THROW(ck::parse_inotify_fdinfo("inotify wd:1 ino:2 mask:2\n"), fsched::Error);  // no sdev
  EXPECT_THROW(ck::parse_inotify_fdinfo("inotify wd:zz ino:2 sdev:1 mask:2\n"), fsched::Error);
  EXPECT_THROW(ck::parse_inotify_fdinfo("inotify wd:0 ino:2 sdev:1 mask:2\n"), fsched::Error);
  EXPECT_THROW(ck::parse_inotify_fdinfo("inotify wd:1 ino:2 sdev:1 mask:2 garbage\n"),
               fsched::Error);
  EXPECT_THROW(ck::parse_inotify_fdinfo("inotify wd:1 ino:2 sdev:1 mask:2 f_handle:abc\n"),
               fsched::Error);
  EXPECT_THROW(ck::parse_inotify_fdinfo("inotify wd:2 ino:2 sdev:1 mask:2\n"
                                        "inotify wd:2 ino:3 sdev:1 mask:2\n"),
               fsched::Error);
}

TEST(DeletedFiles, KeyMatchesProcMapsForm) {
  // /proc/PID/maps shows "fe:01 1234" for device 254:1: the key of a deleted file
  // held open must equal the one built from maps for the same file.
  EXPECT_EQ(ck::file_key(makedev(254, 1), 1234), "fe:01:1234");
  EXPECT_EQ(ck::file_key(makedev(0, 0x1a), 7), "00:1a:7");
}

TEST(DeletedFiles, ManifestRoundTrip) {
  ck::Manifest m;
  ck::DeletedFile d;
  d.key = "fe:00:42";
  d.path = "/tmp/x";
  d.mode = 0640;
  d.uid = 1000;
  d.size = 10000;
  d.runs = {{0, 1}, {2, 1}};
  m.deleted_files.push_back(d);
  ck::Process p;
  ck::Fd f;
  f.kind = ck::FdKind::kInotify;
  f.watches.push_back({5, 99, 0xfe00000, 0x300, 1, "00ff", "/tmp"});
  p.fds.push_back(f);
  ck::Fd g;
  g.kind = ck::FdKind::kFile;
  g.deleted_key = "fe:00:42";
  p.fds.push_back(g);
  m.processes.push_back(p);
  nlohmann::json j = m;
  auto back = j.get<ck::Manifest>();
  ASSERT_EQ(back.deleted_files.size(), 1u);
  EXPECT_EQ(back.deleted_files[0].runs, d.runs);
  EXPECT_EQ(back.deleted_files[0].mode, 0640u);
  EXPECT_EQ(back.processes[0].fds[0].watches[0].wd, 5);
  EXPECT_EQ(back.processes[0].fds[0].watches[0].path, "/tmp");
  EXPECT_EQ(back.processes[0].fds[1].deleted_key, "fe:00:42");
}
