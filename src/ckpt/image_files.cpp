// The image code's file and small helpers (image_files.h).
#include "ckpt/image_files.h"

#include <fcntl.h>
#include <sched.h>
#include <sys/stat.h>

#include <thread>

#include "common/fd.h"

namespace fsched::ckpt::image_detail {

std::optional<std::uint64_t> parse_hex64(std::string_view s) {
  if (s.size() != 16) return std::nullopt;
  std::uint64_t v = 0;
  for (char c : s) {
    int d;
    if (c >= '0' && c <= '9')
      d = c - '0';
    else if (c >= 'a' && c <= 'f')
      d = c - 'a' + 10;
    else if (c >= 'A' && c <= 'F')
      d = c - 'A' + 10;
    else
      return std::nullopt;
    v = (v << 4) | static_cast<std::uint64_t>(d);
  }
  return v;
}

fs::path normalize_dir(const fs::path& dir) {
  fs::path p = dir;
  while (!p.empty() && !p.has_filename() && p != p.root_path()) p = p.parent_path();
  return p;
}

fs::path parent_dir(const fs::path& dir) {
  fs::path parent = dir.parent_path();
  return parent.empty() ? fs::path(".") : parent;
}

std::size_t pread_full(int fd, std::byte* p, std::size_t n, std::uint64_t offset,
                       const fs::path& path) {
  std::size_t done = 0;
  while (done < n) {
    ssize_t r = ::pread(fd, p + done, n - done, static_cast<off_t>(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_errno("{}: read at offset {} failed", path.native(), offset + done);
    }
    if (r == 0) break;
    done += static_cast<std::size_t>(r);
  }
  return done;
}

void fsync_fd(int fd, const fs::path& path) {
  if (::fsync(fd) != 0) fail_errno("{}: fsync failed", path.native());
}

std::optional<std::string> read_small_file(const fs::path& path, std::size_t limit) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) {
    if (errno == ENOENT || errno == ENOTDIR) return std::nullopt;
    if (errno == ELOOP) bad_image("{}: is a symbolic link, not an image file", path.native());
    fail_errno("{}: cannot open", path.native());
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) fail_errno("{}: fstat", path.native());
  if (!S_ISREG(st.st_mode)) bad_image("{}: not a regular file", path.native());
  if (static_cast<std::uint64_t>(st.st_size) > limit)
    bad_image("{}: {} bytes, more than the {} an image file may have", path.native(), st.st_size,
              limit);
  std::string out;
  char buf[64 * 1024];
  for (;;) {
    ssize_t r = ::read(fd.get(), buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      fail_errno("{}: read failed", path.native());
    }
    if (r == 0) break;
    out.append(buf, static_cast<std::size_t>(r));
    if (out.size() > limit) bad_image("{}: grew past {} bytes while read", path.native(), limit);
  }
  return out;
}

void write_new_file(int dirfd, const fs::path& path, std::string_view data) {
  UniqueFd fd(
      ::openat(dirfd, path.filename().c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600));
  if (!fd) fail_errno("{}: cannot create", path.native());
  if (::fchmod(fd.get(), 0600) != 0) fail_errno("{}: cannot chmod 0600", path.native());
  write_all(fd.get(), reinterpret_cast<const std::byte*>(data.data()), data.size(), 0,
            [&] { return fmt::format("{}: write", path.native()); });
  fsync_fd(fd.get(), path);
}

unsigned usable_cpus() {
  cpu_set_t set;
  if (::sched_getaffinity(0, sizeof set, &set) == 0) {
    int n = CPU_COUNT(&set);
    if (n > 0) return static_cast<unsigned>(n);
  }
  unsigned n = std::thread::hardware_concurrency();
  return n ? n : 1;
}

}  // namespace fsched::ckpt::image_detail
