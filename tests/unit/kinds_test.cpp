// Unit tests of the engine's typed kinds: the manifest keeps the same kind strings,
// an unknown one is refused as a bad image naming it, and every fd kind has its
// operations in the dispatch table.
#include <gtest/gtest.h>

#include <set>
#include <string>

#include "ckpt/fd_ops.h"
#include "ckpt/manifest.h"
#include "common/error.h"

namespace ck = fsched::ckpt;

namespace {

// The strings images have always held; renaming one would orphan every image.
const std::pair<ck::VmaKind, const char*> kVmaStrings[] = {
    {ck::VmaKind::kAnon, "anon"},
    {ck::VmaKind::kFile, "file"},
    {ck::VmaKind::kHeap, "heap"},
    {ck::VmaKind::kStack, "stack"},
    {ck::VmaKind::kVdso, "vdso"},
    {ck::VmaKind::kVvar, "vvar"},
    {ck::VmaKind::kVvarVclock, "vvar_vclock"},
    {ck::VmaKind::kShm, "shm"},
    {ck::VmaKind::kSysv, "sysv"},
};
const std::pair<ck::FdKind, const char*> kFdStrings[] = {
    {ck::FdKind::kFile, "file"},       {ck::FdKind::kDir, "dir"},
    {ck::FdKind::kChr, "chr"},         {ck::FdKind::kPipe, "pipe"},
    {ck::FdKind::kFifo, "fifo"},       {ck::FdKind::kUnix, "unix"},
    {ck::FdKind::kEventfd, "eventfd"}, {ck::FdKind::kEpoll, "epoll"},
    {ck::FdKind::kTimerfd, "timerfd"}, {ck::FdKind::kSignalfd, "signalfd"},
    {ck::FdKind::kInotify, "inotify"}, {ck::FdKind::kPidfd, "pidfd"},
    {ck::FdKind::kNetlink, "netlink"}, {ck::FdKind::kInet, "inet"},
    {ck::FdKind::kPty, "pty"},
};

// What get<T>() throws for `j`, or "" if it throws nothing.
template <typename T>
std::string image_error_of(const nlohmann::json& j) {
  try {
    (void)j.get<T>();
  } catch (const fsched::ImageError& e) {
    EXPECT_EQ(e.failure_class(), fsched::FailureClass::kImage);
    return e.what();
  }
  return "";
}

}  // namespace

TEST(Kinds, VmaKindsKeepTheirManifestStrings) {
  EXPECT_EQ(std::size(kVmaStrings), ck::kVmaKindNames.size());
  for (auto [kind, name] : kVmaStrings) {
    ck::Vma v;
    v.kind = kind;
    nlohmann::json j = v;
    EXPECT_EQ(j.at("kind"), name);
    EXPECT_EQ(j.get<ck::Vma>().kind, kind) << name;
  }
}

TEST(Kinds, FdKindsKeepTheirManifestStrings) {
  EXPECT_EQ(std::size(kFdStrings), ck::kFdKinds);
  for (auto [kind, name] : kFdStrings) {
    ck::Fd f;
    f.kind = kind;
    nlohmann::json j = f;
    EXPECT_EQ(j.at("kind"), name);
    EXPECT_EQ(j.get<ck::Fd>().kind, kind) << name;
  }
}

TEST(Kinds, UnknownKindIsAnImageErrorNamingIt) {
  nlohmann::json v = ck::Vma{};
  v["kind"] = "hugetlb";
  EXPECT_NE(image_error_of<ck::Vma>(v).find("\"hugetlb\""), std::string::npos);
  nlohmann::json f = ck::Fd{};
  f["kind"] = "io_uring";
  EXPECT_NE(image_error_of<ck::Fd>(f).find("\"io_uring\""), std::string::npos);
  f["kind"] = 3;  // an old or broken writer's number, not a silent "file"
  EXPECT_NE(image_error_of<ck::Fd>(f), "");
  // Deep in a whole manifest too: the restore meets it there.
  ck::Manifest m;
  m.processes.emplace_back();
  m.processes[0].fds.emplace_back();
  nlohmann::json mj = m;
  mj["processes"][0]["fds"][0]["kind"] = "fanotify";
  EXPECT_NE(image_error_of<ck::Manifest>(mj).find("\"fanotify\""), std::string::npos);
}

TEST(Kinds, EveryFdKindHasItsOperations) {
  std::set<std::string> anon_links;
  for (auto [kind, name] : kFdStrings) {
    const ck::FdOps& ops = ck::fd_ops(kind);
    EXPECT_EQ(ops.kind, kind) << name;
    EXPECT_NE(ops.dump, nullptr) << name;
    EXPECT_NE(ops.open, nullptr) << name;
    if (ops.anon_link) {
      EXPECT_TRUE(anon_links.insert(ops.anon_link).second) << name;
    }
  }
  // The event fds, inotify and pidfds are recognized by their anonymous inode's name.
  EXPECT_EQ(anon_links.size(), 6u);
  // Only epoll has work left once every fd exists (its targets).
  EXPECT_NE(ck::fd_ops(ck::FdKind::kEpoll).finish, nullptr);
  EXPECT_EQ(ck::fd_ops(ck::FdKind::kEventfd).finish, nullptr);
  // Offsets are restored for files and directories only.
  EXPECT_TRUE(ck::fd_ops(ck::FdKind::kFile).seekable);
  EXPECT_FALSE(ck::fd_ops(ck::FdKind::kPipe).seekable);
}

// Images of engines before pseudo-terminals (tty.h) have no pty fields: their fds are
// no pty end and their processes have no controlling terminal, whatever the defaults
// of a new record would be otherwise.
TEST(Kinds, OlderImagesHoldNoPtyState) {
  nlohmann::json f = ck::Fd{};
  for (const char* k :
       {"pty_index", "pty_master", "termios_hex", "winsize", "pty_packet", "tty_exclusive"})
    f.erase(k);
  auto fd = f.get<ck::Fd>();
  EXPECT_EQ(fd.pty_index, -1);
  EXPECT_FALSE(fd.pty_master);
  EXPECT_TRUE(fd.winsize.empty());
  nlohmann::json p = ck::Process{};
  p.erase("ctty");
  p.erase("ctty_pgrp");
  auto proc = p.get<ck::Process>();
  EXPECT_EQ(proc.ctty, -1);
  EXPECT_EQ(proc.ctty_pgrp, 0);
}
