// remote_readv (src/ckpt/remote.h) against a real child process: scattered pages,
// contiguous runs, both sides of the size at which a second thread reads half, and an
// unmapped range in the middle.
#include "ckpt/remote.h"

#include <gtest/gtest.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <vector>

#include <fmt/format.h>

#include "common/error.h"

namespace fsched::ckpt {
namespace {

constexpr std::size_t kPage = 4096;
constexpr std::size_t kPages = 1024;  // 4 MiB

// Page i of the child's area holds the byte (i * 7 + 1) mod 256 throughout; ours is
// overwritten after the fork, so a read of our own memory would not match.
class PatternChild {
 public:
  PatternChild() {
    void* m =
        ::mmap(nullptr, kPages * kPage, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    EXPECT_NE(m, MAP_FAILED);
    area_ = static_cast<std::byte*>(m);
    for (std::size_t i = 0; i < kPages; ++i) std::memset(area_ + i * kPage, fill(i), kPage);
    pid_ = ::fork();
    if (pid_ == 0) {
      for (;;) ::pause();
    }
    std::memset(area_, 0xEE, kPages * kPage);
  }
  ~PatternChild() {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
    ::munmap(area_, kPages * kPage);
  }
  static int fill(std::size_t page) { return static_cast<int>((page * 7 + 1) % 256); }
  iovec range(std::size_t first, std::size_t count) const {
    return {area_ + first * kPage, count * kPage};
  }
  pid_t pid() const { return pid_; }

 private:
  std::byte* area_ = nullptr;
  pid_t pid_ = -1;
};

// Checks that `out` holds, in order, the child's pages of `ranges`.
void expect_pages(const PatternChild& c, const std::vector<iovec>& ranges,
                  const std::vector<std::byte>& out) {
  std::size_t at = 0;
  for (const iovec& r : ranges) {
    const std::size_t first =
        (static_cast<std::byte*>(r.iov_base) - static_cast<std::byte*>(c.range(0, 0).iov_base)) /
        kPage;
    for (std::size_t p = 0; p < r.iov_len / kPage; ++p, at += kPage) {
      ASSERT_EQ(out[at], std::byte(PatternChild::fill(first + p))) << "page " << first + p;
      ASSERT_EQ(out[at + kPage - 1], std::byte(PatternChild::fill(first + p)));
    }
  }
  EXPECT_EQ(at, out.size());
}

// Reads `ranges` of the child with remote_readv and checks what came back.
void expect_read(const PatternChild& c, const std::vector<iovec>& ranges) {
  std::size_t bytes = 0;
  for (const iovec& r : ranges) bytes += r.iov_len;
  std::vector<std::byte> out(bytes);
  remote_readv(c.pid(), ranges, out.data());
  expect_pages(c, ranges, out);
}

TEST(RemoteReadv, ScatteredPagesInOrderOnBothSidesOfTheSplit) {
  PatternChild child;
  // Every third page: 342 single-page ranges (1.3 MiB, read by two threads), then the
  // first 40 of them only (160 KiB, one thread).
  std::vector<iovec> ranges;
  for (std::size_t i = 0; i < kPages; i += 3) ranges.push_back(child.range(i, 1));
  for (std::size_t n : {ranges.size(), std::size_t{40}}) {
    expect_read(
        child, std::vector<iovec>(ranges.begin(), ranges.begin() + static_cast<std::ptrdiff_t>(n)));
  }
}

TEST(RemoteReadv, UnevenRuns) {
  PatternChild child;
  // Runs of 5 down to 1 pages with one-page gaps: the halves split unevenly by count.
  std::vector<iovec> ranges;
  for (std::size_t i = 0, len = 5; i + len <= kPages; i += len + 1, len = len > 1 ? len - 1 : 5)
    ranges.push_back(child.range(i, len));
  expect_read(child, ranges);
}

TEST(RemoteReadv, MoreRangesThanIovMaxInEachHalf) {
  PatternChild child;
  // 2,500 single pages, every page of the area in turn (a page may be read twice): each
  // thread's half takes two calls of at most IOV_MAX ranges.
  std::vector<iovec> ranges;
  for (std::size_t i = 0; i < 2500; ++i) ranges.push_back(child.range(i % kPages, 1));
  expect_read(child, ranges);
}

TEST(RemoteReadv, UnmappedRangeThrowsNamingProcessAndAddress) {
  PatternChild child;
  void* hole = ::mmap(nullptr, kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  ASSERT_NE(hole, MAP_FAILED);
  ::munmap(hole, kPage);  // in neither process now (the child forked before)
  std::vector<iovec> ranges;
  for (std::size_t i = 0; i < 200; ++i) ranges.push_back(child.range(i * 2, 1));
  ranges.insert(ranges.begin() + 150, iovec{hole, kPage});  // in the second half
  std::vector<std::byte> out(ranges.size() * kPage);
  try {
    remote_readv(child.pid(), ranges, out.data());
    FAIL() << "an unmapped range was read";
  } catch (const Error& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find(std::to_string(child.pid())), std::string::npos) << what;
    EXPECT_NE(what.find(fmt::format("{:#x}", reinterpret_cast<std::uintptr_t>(hole))),
              std::string::npos)
        << what;
  }
}

}  // namespace
}  // namespace fsched::ckpt
