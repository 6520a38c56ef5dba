// Writing the page stream into a restored process (page_restore.h).
#include "ckpt/page_restore.h"

#include <climits>

#include <algorithm>
#include <cstdint>
#include <filesystem>
#include <vector>

#include "common/error.h"

namespace fsched::ckpt {
namespace {

namespace fs = std::filesystem;

// A position in a list of remote ranges: `done` bytes into range `ri`.
struct RemoteCursor {
  std::size_t ri = 0;
  std::uint64_t done = 0;
};

// Writes len bytes from src -- the page stream from offset `pos` -- into process pid,
// filling the remote ranges from c on, and moves c past them. One process_vm_writev(2)
// per IOV_MAX (limits.h) remote ranges. len must not exceed the bytes left after c.
void write_to_process(pid_t pid, const std::byte* src, std::size_t len,
                      std::span<const iovec> remote, RemoteCursor& c, std::uint64_t pos,
                      const fs::path& path) {
  std::vector<iovec> part;
  while (len > 0) {
    part.clear();
    std::size_t n = 0;
    while (n < len && part.size() < std::size_t{IOV_MAX}) {
      const iovec& r = remote[c.ri];
      std::size_t take =
          static_cast<std::size_t>(std::min<std::uint64_t>(r.iov_len - c.done, len - n));
      if (take) part.push_back({static_cast<std::byte*>(r.iov_base) + c.done, take});
      n += take;
      c.done += take;
      if (c.done == r.iov_len) {
        ++c.ri;
        c.done = 0;
      }
    }
    iovec local{const_cast<std::byte*>(src), n};
    ssize_t w = ::process_vm_writev(pid, &local, 1, part.data(), part.size(), 0);
    if (w != static_cast<ssize_t>(n)) {
      auto at = reinterpret_cast<std::uint64_t>(part[0].iov_base);
      if (w < 0)
        fail_errno(
            "{}: cannot write {} bytes of the page stream at offset {} into process {} "
            "at {:#x}",
            path.native(), n, pos, pid, at);
      fail(
          "{}: only {} of {} bytes of the page stream at offset {} reached process {} at "
          "{:#x} (a remote range unmapped, or pages.img shortened since it was verified)",
          path.native(), w, n, pos, pid, at);
    }
    src += n;
    len -= n;
    pos += n;
  }
}

// Chunks [first, end) claimed in increasing order by several threads, with the error

// A PageSink writing into remote ranges of a process: the delivery's byte `at` goes to
// the remote byte `at` (ranges concatenated). Thread-safe: put() keeps no state.
class ProcessSink final : public PageSink {
 public:
  ProcessSink(pid_t pid, std::span<const iovec> remote, std::uint64_t stream_pos,
              const fs::path& pages_path)
      : pid_(pid), remote_(remote), pos_(stream_pos), path_(pages_path) {
    begin_.reserve(remote.size());
    std::uint64_t at = 0;
    for (const iovec& r : remote) {
      begin_.push_back(at);
      at += r.iov_len;
    }
  }

  std::uint64_t total() const {
    return begin_.empty() ? 0 : begin_.back() + remote_.back().iov_len;
  }

  void put(const std::byte* data, std::size_t len, std::uint64_t at) override {
    // The last range starting at or before `at` holds it (empty ranges are skipped).
    auto it = std::upper_bound(begin_.begin(), begin_.end(), at);
    RemoteCursor c;
    c.ri = static_cast<std::size_t>(it - begin_.begin()) - 1;
    c.done = at - begin_[c.ri];
    write_to_process(pid_, data, len, remote_, c, pos_ + at, path_);
  }

 private:
  const pid_t pid_;
  const std::span<const iovec> remote_;
  const std::uint64_t pos_;  // stream offset of the delivery's first byte
  const fs::path& path_;
  std::vector<std::uint64_t> begin_;  // offset of each remote range in the delivery
};

}  // namespace

void copy_to_process(PageReader& pages, pid_t pid, std::span<const iovec> remote) {
  ProcessSink sink(pid, remote, pages.position(), pages.path());
  pages.deliver(sink.total(), sink);
}

}  // namespace fsched::ckpt
