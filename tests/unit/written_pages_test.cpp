// Written-page tracking (src/ckpt/written_pages.h) on a real child process: what the
// kernel reports as written after writes, MADV_DONTNEED, mremap(2), and once the last
// userfaultfd is closed. The child makes the userfaultfd (as the dump does by
// injection) and the test drives it from outside, as the dumper does.
#include "ckpt/written_pages.h"

#include <gtest/gtest.h>
#include <linux/userfaultfd.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fcntl.h>

#include <tuple>

#include "common/error.h"

namespace fsched::ckpt {
namespace {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kPages = 64;

// A child with kPages written pages and a userfaultfd of its own mm, which it closes
// once the test holds it; it obeys one-letter commands on a pipe.
class Child {
 public:
  Child() {
    int c[2], a[2];
    EXPECT_EQ(::pipe2(c, O_CLOEXEC), 0);
    EXPECT_EQ(::pipe2(a, O_CLOEXEC), 0);
    pid_ = ::fork();
    if (pid_ == 0) {
      ::close(c[1]);
      ::close(a[0]);
      run(c[0], a[1]);
    }
    ::close(c[0]);
    ::close(a[1]);
    cmd_.reset(c[1]);
    ans_.reset(a[0]);
    std::uint64_t msg[2];
    EXPECT_EQ(::read(ans_.get(), msg, sizeof msg), static_cast<ssize_t>(sizeof msg));
    base_ = msg[0];
    UniqueFd pidfd(static_cast<int>(::syscall(SYS_pidfd_open, pid_, 0)));
    uffd_.reset(static_cast<int>(::syscall(SYS_pidfd_getfd, pidfd.get(), int(msg[1]), 0)));
    EXPECT_TRUE(uffd_) << errno;
    command('c');  // the child closes its own
    pagemap_.reset(::open(fmt::format("/proc/{}/pagemap", pid_).c_str(), O_RDONLY | O_CLOEXEC));
    EXPECT_TRUE(pagemap_);
  }
  ~Child() {
    cmd_.reset();
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
  // Sends a command and returns the child's answer (an address, or 0).
  std::uint64_t command(char k) {
    EXPECT_EQ(::write(cmd_.get(), &k, 1), 1);
    std::uint64_t v = ~0ULL;
    EXPECT_EQ(::read(ans_.get(), &v, sizeof v), static_cast<ssize_t>(sizeof v));
    return v;
  }
  std::uint64_t base_ = 0;
  pid_t pid_ = -1;
  UniqueFd uffd_, pagemap_;

 private:
  [[noreturn]] static void run(int cmd, int ans) {
    auto* m = static_cast<char*>(::mmap(nullptr, kPages * kPage, PROT_READ | PROT_WRITE,
                                        MAP_PRIVATE | MAP_ANONYMOUS, -1, 0));
    for (std::uint64_t i = 0; i < kPages; ++i) m[i * kPage] = 1;
    int u = static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY));
    std::uint64_t msg[2] = {reinterpret_cast<std::uint64_t>(m), static_cast<std::uint64_t>(u)};
    if (::write(ans, msg, sizeof msg) != sizeof msg) ::_exit(1);
    char k;
    while (::read(cmd, &k, 1) == 1) {
      std::uint64_t v = 0;
      if (k == 'c') ::close(u);
      if (k == 'w') {
        m[3 * kPage] = 2;
        m[7 * kPage + 100] = 2;
        ::madvise(m + 10 * kPage, kPage, MADV_DONTNEED);  // zeroed, not touched again
        ::madvise(m + 20 * kPage, kPage, MADV_DONTNEED);  // zeroed, then read
        volatile char r = m[20 * kPage];
        (void)r;
      }
      if (k == 'r') {  // moved elsewhere: onto a free range the kernel picked (a fixed
        // address above `m` could lie on the libraries, which MREMAP_FIXED would unmap)
        void* free = ::mmap(nullptr, kPages * kPage, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        void* to = free == MAP_FAILED ? MAP_FAILED
                                      : ::mremap(m, kPages * kPage, kPages * kPage,
                                                 MREMAP_MAYMOVE | MREMAP_FIXED, free);
        m = static_cast<char*>(to);
        v = reinterpret_cast<std::uint64_t>(to);
      }
      if (::write(ans, &v, sizeof v) != sizeof v) ::_exit(1);
    }
    ::_exit(0);
  }
  UniqueFd cmd_, ans_;
};

// Page indexes of `states` (relative to base) that have written / present set.
std::vector<std::uint64_t> pages_where(const std::vector<PageStates>& states, std::uint64_t base,
                                       bool written, bool present) {
  std::vector<std::uint64_t> out;
  for (const PageStates& s : states)
    if (s.written == written && s.present == present)
      for (std::uint64_t a = s.start; a < s.end; a += kPage) out.push_back((a - base) / kPage);
  return out;
}

// The states cover [start, end) exactly, in order, without gaps.
void expect_cover(const std::vector<PageStates>& states, std::uint64_t start, std::uint64_t end) {
  ASSERT_FALSE(states.empty());
  EXPECT_EQ(states.front().start, start);
  EXPECT_EQ(states.back().end, end);
  for (std::size_t i = 1; i < states.size(); ++i) EXPECT_EQ(states[i - 1].end, states[i].start);
}

TEST(WrittenPages, ReportsWhatWasWrittenSinceTheLastReset) {
  ASSERT_TRUE(written_tracking_available()) << "no UFFD_FEATURE_WP_ASYNC or PAGEMAP_SCAN";
  Child c;
  const std::uint64_t a = c.base_, e = a + kPages * kPage;
  start_wp_async(c.uffd_.get(), "test");
  ASSERT_TRUE(track_range(c.uffd_.get(), a, e, "test"));
  ASSERT_TRUE(track_range(c.uffd_.get(), a, e, "test")) << "registering again must be accepted";
  // Never protected: all written. The reset protects them.
  auto s = scan_pages(c.pagemap_.get(), a, e, true, "test");
  expect_cover(s, a, e);
  EXPECT_EQ(pages_where(s, a, true, true).size(), kPages);
  s = scan_pages(c.pagemap_.get(), a, e, false, "test");
  EXPECT_EQ(pages_where(s, a, false, true).size(), kPages);

  c.command('w');
  s = scan_pages(c.pagemap_.get(), a, e, true, "test");
  expect_cover(s, a, e);
  EXPECT_EQ(pages_where(s, a, true, true), (std::vector<std::uint64_t>{3, 7, 20}));
  // Zapped and not touched again: written (its old contents are gone), not present.
  EXPECT_EQ(pages_where(s, a, true, false), (std::vector<std::uint64_t>{10}));
  EXPECT_EQ(pages_where(s, a, false, true).size(), kPages - 4);
  // After that reset nothing is written; the zapped page is a protected hole (its
  // marker counts as present).
  s = scan_pages(c.pagemap_.get(), a, e, true, "test");
  expect_cover(s, a, e);
  EXPECT_TRUE(pages_where(s, a, true, true).empty());
  EXPECT_TRUE(pages_where(s, a, true, false).empty());
  EXPECT_EQ(pages_where(s, a, false, true).size(), kPages);
}

// Registers the child's whole mapping for tracking and resets it once, as a dump does.
void track_and_reset(Child& c) {
  const std::uint64_t a = c.base_, e = a + kPages * kPage;
  start_wp_async(c.uffd_.get(), "test");
  ASSERT_TRUE(track_range(c.uffd_.get(), a, e, "test"));
  scan_pages(c.pagemap_.get(), a, e, true, "test");
}

TEST(WrittenPages, MovedMappingIsAllWrittenAndNotTracked) {
  ASSERT_TRUE(written_tracking_available()) << "no UFFD_FEATURE_WP_ASYNC or PAGEMAP_SCAN";
  Child c;
  const std::uint64_t a = c.base_;
  ASSERT_NO_FATAL_FAILURE(track_and_reset(c));
  const std::uint64_t b = c.command('r');
  ASSERT_NE(b, reinterpret_cast<std::uint64_t>(MAP_FAILED)) << "the child's mremap failed";
  ASSERT_NE(b, a);
  // mremap(2) drops the registration (no UFFD_FEATURE_EVENT_REMAP): every page written.
  auto s = scan_pages(c.pagemap_.get(), b, b + kPages * kPage, false, "test");
  EXPECT_EQ(pages_where(s, b, true, true).size(), kPages);
  // A reset of a range no userfaultfd of ours tracks fails rather than skip it.
  EXPECT_THROW(scan_pages(c.pagemap_.get(), b, b + kPages * kPage, true, "test"), Error);
}

TEST(WrittenPages, ResetWrittenReportsTheJobsOwnWrittenPagesAndPassesOverUntrackedRanges) {
  ASSERT_TRUE(written_tracking_available()) << "no UFFD_FEATURE_WP_ASYNC or PAGEMAP_SCAN";
  Child c;
  const std::uint64_t a = c.base_, e = a + kPages * kPage;
  ASSERT_NO_FATAL_FAILURE(track_and_reset(c));
  c.command('w');
  // Pages 3, 7 and 20 hold data written since; 10 was zapped (written, nothing there:
  // reported too, as the reset protects it as well).
  // The walk covers the whole address space around the mapping, untracked mappings
  // (the libraries, the stack) passed over rather than failing.
  auto w = reset_written(c.pagemap_.get(), 0x10000, 0x7ffffffff000, "test");
  std::vector<std::tuple<std::uint64_t, std::uint64_t, bool>> got;  // page, pages, present
  for (const PageStates& r : w) {
    EXPECT_TRUE(r.written);
    EXPECT_FALSE(r.file || r.guard);
    got.emplace_back((r.start - a) / kPage, (r.end - r.start) / kPage, r.present);
  }
  using T = std::tuple<std::uint64_t, std::uint64_t, bool>;
  EXPECT_EQ(got, (std::vector<T>{{3, 1, true}, {7, 1, true}, {10, 1, false}, {20, 1, true}}));
  // They were protected again in the same walk.
  EXPECT_TRUE(reset_written(c.pagemap_.get(), a, e, "test").empty());
  auto s = scan_pages(c.pagemap_.get(), a, e, false, "test");
  EXPECT_TRUE(pages_where(s, a, true, true).empty());
  // Moved: untracked, so nothing is reported there (the dump's own scan under the
  // freeze finds it all written).
  const std::uint64_t b = c.command('r');
  ASSERT_NE(b, reinterpret_cast<std::uint64_t>(MAP_FAILED));
  EXPECT_TRUE(reset_written(c.pagemap_.get(), b, b + kPages * kPage, "test").empty());
}

TEST(WrittenPages, ClosingTheLastUserfaultfdStopsTracking) {
  ASSERT_TRUE(written_tracking_available()) << "no UFFD_FEATURE_WP_ASYNC or PAGEMAP_SCAN";
  Child c;
  const std::uint64_t a = c.base_, e = a + kPages * kPage;
  ASSERT_NO_FATAL_FAILURE(track_and_reset(c));
  c.uffd_.reset();
  auto s = scan_pages(c.pagemap_.get(), a, e, false, "test");
  EXPECT_EQ(pages_where(s, a, true, true).size(), kPages);
}

TEST(WrittenPages, ExitedProcessCannotBeTracked) {
  ASSERT_TRUE(written_tracking_available()) << "no UFFD_FEATURE_WP_ASYNC or PAGEMAP_SCAN";
  UniqueFd uffd;
  std::uint64_t a = 0;
  {
    Child c;
    start_wp_async(c.uffd_.get(), "test");
    uffd = std::move(c.uffd_);
    a = c.base_;
  }
  EXPECT_FALSE(track_range(uffd.get(), a, a + kPage, "test"));
}

}  // namespace
}  // namespace fsched::ckpt
