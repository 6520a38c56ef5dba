// Written-page tracking (written_pages.h).
#include "ckpt/written_pages.h"

#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "common/error.h"

namespace fsched::ckpt {
namespace {

// Linux 6.7 uapi that Debian 12's headers (6.1) lack: the one place they are defined.
// linux/userfaultfd.h:
constexpr std::uint64_t kUffdFeatureWpUnpopulated = 1ULL << 13;
constexpr std::uint64_t kUffdFeatureWpAsync = 1ULL << 15;
// linux/fs.h:
struct PageRegion {
  std::uint64_t start, end, categories;
};
struct PmScanArg {
  std::uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages, category_inverted,
      category_mask, category_anyof_mask, return_mask;
};
constexpr unsigned long kPagemapScan = _IOWR('f', 16, PmScanArg);
constexpr std::uint64_t kPageIsWritten = 1 << 1;
constexpr std::uint64_t kPageIsFile = 1 << 2;
constexpr std::uint64_t kPageIsPresent = 1 << 3;
constexpr std::uint64_t kPageIsSwapped = 1 << 4;
constexpr std::uint64_t kPageIsGuard = 1 << 8;
constexpr std::uint64_t kPmScanWpMatching = 1 << 0;
constexpr std::uint64_t kPmScanCheckWpAsync = 1 << 1;

constexpr std::uint64_t kWanted = kUffdFeatureWpAsync | kUffdFeatureWpUnpopulated;
constexpr std::size_t kRegionsPerCall = 512;

// Whether PAGEMAP_SCAN of our own /proc/self/pagemap accepts `category`: it refuses
// an unknown one (EINVAL). An empty range: the kernel checks the arguments and walks
// nothing.
bool scan_accepts(std::uint64_t category) {
  UniqueFd pm(::open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC));
  if (!pm) return false;
  PageRegion r{};
  PmScanArg a{};
  a.size = sizeof a;
  a.start = a.end = 0x10000;
  a.vec = reinterpret_cast<std::uint64_t>(&r);
  a.vec_len = 1;
  a.category_anyof_mask = a.return_mask = category;
  return ::ioctl(pm.get(), kPagemapScan, &a) >= 0;
}

bool probe() {
  UniqueFd u(static_cast<int>(::syscall(SYS_userfaultfd, O_CLOEXEC | UFFD_USER_MODE_ONLY)));
  if (!u) return false;
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = kWanted;
  if (::ioctl(u.get(), UFFDIO_API, &api) < 0 || (api.features & kWanted) != kWanted) return false;
  return scan_accepts(kPageIsWritten);
}

}  // namespace

bool written_tracking_available() {
  static const bool available = probe();
  return available;
}

void start_wp_async(int uffd, const std::string& what) {
  uffdio_api api{};
  api.api = UFFD_API;
  api.features = kWanted;
  if (::ioctl(uffd, UFFDIO_API, &api) < 0) fail_errno("{}: UFFDIO_API (write-protect async)", what);
  if ((api.features & kWanted) != kWanted)
    fail("{}: the kernel lacks UFFD_FEATURE_WP_ASYNC or UFFD_FEATURE_WP_UNPOPULATED", what);
}

bool track_range(int uffd, std::uint64_t start, std::uint64_t end, const std::string& what) {
  uffdio_register r{};
  r.range.start = start;
  r.range.len = end - start;
  r.mode = UFFDIO_REGISTER_MODE_WP;
  if (::ioctl(uffd, UFFDIO_REGISTER, &r) == 0) return true;
  // ENOMEM: the mm is gone (mmget_not_zero failed), or the kernel is short of memory.
  if (errno == EBUSY || errno == EINVAL || errno == ESRCH || errno == ENOMEM) return false;
  fail_errno("{}: UFFDIO_REGISTER (write-protect) {:#x}-{:#x}", what, start, end);
}

std::vector<PageStates> scan_pages(int pagemap, std::uint64_t start, std::uint64_t end, bool reset,
                                   const std::string& what, bool report_file) {
  std::vector<PageStates> out;
  static const std::uint64_t guard_mask = scan_accepts(kPageIsGuard) ? kPageIsGuard : 0;
  auto add = [&](std::uint64_t s, std::uint64_t e, std::uint64_t cat) {
    if (s >= e) return;
    PageStates st{s,
                  e,
                  (cat & kPageIsWritten) != 0,
                  (cat & (kPageIsPresent | kPageIsSwapped)) != 0,
                  (cat & kPageIsFile) != 0,
                  (cat & kPageIsGuard) != 0,
                  (cat & (kPageIsPresent | kPageIsSwapped)) == kPageIsSwapped};
    if (!out.empty() && out.back().end == s && out.back().written == st.written &&
        out.back().present == st.present && out.back().file == st.file &&
        out.back().guard == st.guard && out.back().swapped == st.swapped)
      out.back().end = e;
    else
      out.push_back(st);
  };
  std::vector<PageRegion> vec(kRegionsPerCall);
  std::uint64_t at = start;
  while (at < end) {
    PmScanArg a{};
    a.size = sizeof a;
    // The written pages are protected again in the same walk; a range no userfaultfd
    // of ours tracks fails the scan (EPERM) instead of being skipped unreported.
    a.flags = reset ? kPmScanWpMatching | kPmScanCheckWpAsync : 0;
    a.start = at;
    a.end = end;
    a.vec = reinterpret_cast<std::uint64_t>(vec.data());
    a.vec_len = vec.size();
    a.category_anyof_mask = kPageIsWritten | kPageIsPresent | kPageIsSwapped;
    a.return_mask = kPageIsWritten | kPageIsPresent | kPageIsSwapped | guard_mask |
                    (report_file ? kPageIsFile : 0);
    long n = ::ioctl(pagemap, kPagemapScan, &a);
    if (n < 0) fail_errno("{}: PAGEMAP_SCAN {:#x}-{:#x}", what, at, end);
    const std::uint64_t stop = std::min(a.walk_end ? a.walk_end : end, end);
    std::uint64_t cur = at;
    for (long i = 0; i < n; ++i) {
      const PageRegion& r = vec[static_cast<std::size_t>(i)];
      add(cur, r.start, 0);  // no category: a hole untouched since the reset
      add(r.start, r.end, r.categories);
      cur = r.end;
    }
    add(cur, stop, 0);
    if (stop <= at) fail("{}: PAGEMAP_SCAN made no progress at {:#x}", what, at);
    at = stop;
  }
  return out;
}

std::vector<PageStates> reset_written(int pagemap, std::uint64_t start, std::uint64_t end,
                                      const std::string& what) {
  std::vector<PageStates> out;
  static const std::uint64_t guard_mask = scan_accepts(kPageIsGuard) ? kPageIsGuard : 0;
  std::vector<PageRegion> vec(kRegionsPerCall);
  for (std::uint64_t at = start; at < end;) {
    PmScanArg a{};
    a.size = sizeof a;
    a.flags = kPmScanWpMatching;
    a.start = at;
    a.end = end;
    a.vec = reinterpret_cast<std::uint64_t>(vec.data());
    a.vec_len = vec.size();
    a.category_mask = kPageIsWritten;
    a.return_mask = kPageIsWritten | kPageIsPresent | kPageIsSwapped | kPageIsFile | guard_mask;
    long n = ::ioctl(pagemap, kPagemapScan, &a);
    if (n < 0) fail_errno("{}: PAGEMAP_SCAN {:#x}-{:#x}", what, at, end);
    for (long i = 0; i < n; ++i) {
      const PageRegion& r = vec[static_cast<std::size_t>(i)];
      PageStates st{r.start,
                    r.end,
                    true,
                    (r.categories & (kPageIsPresent | kPageIsSwapped)) != 0,
                    (r.categories & kPageIsFile) != 0,
                    (r.categories & kPageIsGuard) != 0,
                    (r.categories & (kPageIsPresent | kPageIsSwapped)) == kPageIsSwapped};
      if (!out.empty() && out.back().end == st.start && out.back().present == st.present &&
          out.back().file == st.file && out.back().guard == st.guard &&
          out.back().swapped == st.swapped)
        out.back().end = st.end;
      else
        out.push_back(st);
    }
    const std::uint64_t stop = std::min(a.walk_end ? a.walk_end : end, end);
    if (stop <= at) fail("{}: PAGEMAP_SCAN made no progress at {:#x}", what, at);
    at = stop;
  }
  return out;
}

}  // namespace fsched::ckpt
