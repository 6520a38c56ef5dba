// The parent chain of an incremental image (parent_chain.h).
#include "ckpt/parent_chain.h"

#include <sys/uio.h>
#include <unistd.h>

#include <climits>
#include <cstring>

#include <algorithm>
#include <set>

#include "ckpt/vma_kind.h"
#include "common/error.h"

namespace fsched::ckpt {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kNoData = ~0ULL;  // a segment the link takes from its own parent
using chain_detail::Piece;
using chain_detail::Seg;

struct ParentChain::Link {
  std::filesystem::path dir;
  std::unique_ptr<ImageReader> reader;
  Manifest m;
  std::map<int, std::vector<Seg>> segs;  // by pid in the job, sorted by start
  // Shared memory objects, deleted files and SysV segments by key (ShmObject::key,
  // DeletedFile::key, sysv_object_key): byte offsets in the object.
  std::map<std::string, std::vector<Seg>> objects;
};

ParentChain::~ParentChain() = default;

std::filesystem::path parent_dir(const std::filesystem::path& dir, const Manifest& m) {
  std::filesystem::path p(m.parent.dir);
  if (p.empty()) fail_image("{}: an incremental image that names no parent", dir.string());
  return p.is_absolute() ? p : dir.parent_path() / p;
}

namespace {

bool seg_before(const Seg& a, const Seg& b) { return a.start < b.start; }

// segs[begin, mid) and segs[mid, end) -- a mapping's runs and parent runs, each
// ascending as PageRuns keeps them -- merged into one ascending stretch: linear, where
// sorting the ~50,000 segments of a link of random rewrites took ~3.5 ms a link.
void merge_sorted(std::vector<Seg>& segs, std::size_t begin, std::size_t mid) {
  auto b = segs.begin() + static_cast<std::ptrdiff_t>(begin);
  auto m = segs.begin() + static_cast<std::ptrdiff_t>(mid);
  if (std::is_sorted(b, m, seg_before) && std::is_sorted(m, segs.end(), seg_before))
    std::inplace_merge(b, m, segs.end(), seg_before);
}

// Sorted by start (a no-op check when the mappings were in address order).
void sort_segs(std::vector<Seg>& segs) {
  if (!std::is_sorted(segs.begin(), segs.end(), seg_before))
    std::sort(segs.begin(), segs.end(), seg_before);
}

// Where each run of each process starts in the link's page stream (sections.h: the
// pages section holds every live process's VMAs' runs, in manifest order).
std::map<int, std::vector<Seg>> index_link(const std::filesystem::path& dir, const Manifest& m) {
  std::uint64_t off = kNoData;
  for (const SectionStart& s : m.sections)
    if (s.name == "pages") off = s.offset;
  if (off == kNoData) fail_image("{}: no pages section", dir.string());
  std::map<int, std::vector<Seg>> out;
  for (const Process& p : m.processes) {
    if (p.zombie) continue;
    auto& segs = out[p.pid];
    for (const Vma& v : p.vmas) {
      if (is_kernel_mapping(v.kind)) continue;
      const std::size_t begin = segs.size();
      for (auto [first, count] : v.runs) {
        if (first > (v.end - v.start) / kPage || count > (v.end - v.start) / kPage - first)
          fail_image("{}: page run beyond mapping {:#x}-{:#x}", dir.string(), v.start, v.end);
        segs.push_back({v.start + first * kPage, v.start + (first + count) * kPage, off});
        off += count * kPage;
      }
      const std::size_t mid = segs.size();
      for (auto [first, count] : v.parent_runs) {
        if (first > (v.end - v.start) / kPage || count > (v.end - v.start) / kPage - first)
          fail_image("{}: parent run beyond mapping {:#x}-{:#x}", dir.string(), v.start, v.end);
        segs.push_back({v.start + first * kPage, v.start + (first + count) * kPage, kNoData});
      }
      merge_sorted(segs, begin, mid);
    }
    sort_segs(segs);
    for (std::size_t i = 1; i < segs.size(); ++i)
      if (segs[i].start < segs[i - 1].end)
        fail_image("{}: process {}: page runs overlap at {:#x}", dir.string(), p.pid,
                   segs[i].start);
  }
  return out;
}

// Where each run of each shared memory object, deleted file and SysV segment starts in
// the link's page stream: the shm section holds the objects' runs in Manifest::shm
// order, the deleted_files section the files' in Manifest::deleted_files order, the
// sysv_shm section the segments' in Manifest::sysv_shm order. One key space (a file
// that is also an object is stored once, as the object; a segment is "sysv:ID").
std::map<std::string, std::vector<Seg>> index_objects(const std::filesystem::path& dir,
                                                      const Manifest& m) {
  std::map<std::string, std::vector<Seg>> out;
  auto index = [&](const char* section, const auto& list, const char* what, auto key_of) {
    if (list.empty()) return;
    std::uint64_t off = kNoData;
    for (const SectionStart& s : m.sections)
      if (s.name == section) off = s.offset;
    if (off == kNoData) fail_image("{}: no {} section", dir.string(), section);
    for (const auto& o : list) {
      const std::string key = key_of(o);
      auto [it, fresh] = out.try_emplace(key);
      if (!fresh) fail_image("{}: {} {} twice", dir.string(), what, key);
      auto& segs = it->second;
      const std::uint64_t pages = (o.size + kPage - 1) / kPage;
      auto check = [&](std::uint64_t first, std::uint64_t count) {
        if (first > pages || count > pages - first)
          fail_image("{}: {} {}: page run beyond its size", dir.string(), what, key);
      };
      for (auto [first, count] : o.runs) {
        check(first, count);
        segs.push_back({first * kPage, (first + count) * kPage, off});
        off += count * kPage;
      }
      const std::size_t mid = segs.size();
      for (auto [first, count] : o.parent_runs) {
        check(first, count);
        segs.push_back({first * kPage, (first + count) * kPage, kNoData});
      }
      merge_sorted(segs, 0, mid);
      sort_segs(segs);
      for (std::size_t i = 1; i < segs.size(); ++i)
        if (segs[i].start < segs[i - 1].end)
          fail_image("{}: {} {}: page runs overlap", dir.string(), what, key);
    }
  };
  auto by_key = [](const auto& o) { return o.key; };
  index("shm", m.shm, "shared memory object", by_key);
  index("deleted_files", m.deleted_files, "deleted file", by_key);
  index("sysv_shm", m.sysv_shm, "SysV segment",
        [](const SysvShm& s) { return sysv_object_key(s.id); });
  return out;
}

}  // namespace

std::unique_ptr<ParentChain> ParentChain::open(const std::filesystem::path& dir, const Manifest& m,
                                               std::span<const std::byte> key,
                                               const ImageReader* head) {
  std::unique_ptr<ParentChain> chain(new ParentChain());
  // The pages of the head and of every link, hashed by one pool from the moment each
  // is open: verifying link by link left a CPU idle at the end of each small link, and
  // verifying once all were open left one idle while they were opened (~30 ms for 9
  // links).
  ImageVerifier verifier;
  if (head) verifier.add(*head, {});
  std::set<std::string> seen{m.image_id};
  std::filesystem::path child_dir = dir;
  const Manifest* child = &m;
  while (child->kind == "incremental") {
    if (chain->links_.size() == kMaxChainLinks)
      fail_image("{}: more than {} parent images", dir.string(), kMaxChainLinks);
    auto link = std::make_unique<Link>();
    link->dir = parent_dir(child_dir, *child);
    const std::string who =
        fmt::format("parent image {} (of {})", link->dir.string(), child_dir.string());
    try {
      link->reader = ImageReader::open(link->dir, key);
      link->m = parse_manifest(link->reader->manifest(), link->dir.string());
    } catch (const Error& e) {
      throw ImageError(fmt::format("{}: {}", who, e.what()));
    }
    if (link->m.image_id != child->parent.image_id)
      fail_image("{}: it is image {}, not {} which its child was made on (replaced?)", who,
                 link->m.image_id, child->parent.image_id);
    if (!seen.insert(link->m.image_id).second) fail_image("{}: the chain loops", who);
    if (link->m.kind != "incremental" && link->m.kind != "full" && link->m.kind != "pre-dump")
      fail_image("{}: unknown image kind \"{}\"", who, link->m.kind);
    link->segs = index_link(link->dir, link->m);
    link->objects = index_objects(link->dir, link->m);
    child_dir = link->dir;
    chain->links_.push_back(std::move(link));
    child = &chain->links_.back()->m;
    // Only once the chain owns it: the verifier's threads read it until the verifier,
    // declared after the chain, is gone.
    verifier.add(*chain->links_.back()->reader, who);
  }
  verifier.finish();
  return chain;
}

std::vector<std::filesystem::path> ParentChain::links() const {
  std::vector<std::filesystem::path> out;
  for (auto& l : links_) out.push_back(l->dir);
  return out;
}

namespace {

// Calls f(src, len, addr) for each part of the delivered bytes [data, data + len) --
// stream offsets s.. -- that falls in one of `pieces` (sorted by stream offset): the
// bytes at src go to address (or object offset) addr. Bytes between pieces (pages a
// newer link holds) are skipped.
template <typename F>
void for_each_piece(std::span<const Piece> pieces, const std::byte* data, std::size_t len,
                    std::uint64_t s, F&& f) {
  const std::uint64_t e = s + len;
  auto it = std::upper_bound(pieces.begin(), pieces.end(), s,
                             [](std::uint64_t x, const Piece& p) { return x < p.off + p.len; });
  for (; it != pieces.end() && it->off < e; ++it) {
    const std::uint64_t lo = std::max(s, it->off), hi = std::min(e, it->off + it->len);
    f(data + (lo - s), static_cast<std::size_t>(hi - lo), it->addr + (lo - it->off));
  }
}

// Hands what a link's reader delivers to the process: the needed pieces of each
// delivered span, by process_vm_writev(2) with up to IOV_MAX (limits.h) pieces a call;
// bytes between pieces (pages a newer link holds) are dropped. Stateless between
// calls, so the reader's two threads may put at once.
class ScatterSink final : public PageSink {
 public:
  ScatterSink(int pid, pid_t host_pid, std::span<const Piece> pieces, std::uint64_t base,
              const std::filesystem::path& dir)
      : pid_(pid), host_pid_(host_pid), pieces_(pieces), base_(base), dir_(dir) {}

  void put(const std::byte* data, std::size_t len, std::uint64_t at) override {
    std::vector<iovec> local, remote;
    auto flush = [&] {
      if (local.empty()) return;
      std::uint64_t n = 0;
      for (const iovec& v : local) n += v.iov_len;
      ssize_t w = ::process_vm_writev(host_pid_, local.data(), local.size(), remote.data(),
                                      remote.size(), 0);
      if (w != static_cast<ssize_t>(n))
        fail_errno("process {}: writing the pages at {:#x} ({} bytes) from parent image {}", pid_,
                   reinterpret_cast<std::uint64_t>(remote.front().iov_base), n, dir_.string());
      local.clear();
      remote.clear();
    };
    for_each_piece(pieces_, data, len, base_ + at,
                   [&](const std::byte* src, std::size_t n, std::uint64_t addr) {
                     local.push_back({const_cast<std::byte*>(src), n});
                     remote.push_back({reinterpret_cast<void*>(addr), n});
                     if (local.size() == std::size_t{IOV_MAX}) flush();
                   });
    flush();
  }

 private:
  const int pid_;
  const pid_t host_pid_;
  const std::span<const Piece> pieces_;
  const std::uint64_t base_;  // stream offset of the delivery's first byte
  const std::filesystem::path& dir_;
};

}  // namespace

namespace {

// Writes what a link's reader delivers into an object of `size` bytes, `addr` being
// an offset in it, through `write(src, n, offset)`; nothing past its size. The reader's
// two threads may put at once: into distinct pieces.
class ObjectSink final : public PageSink {
 public:
  using Write = std::function<void(const std::byte*, std::size_t, std::uint64_t)>;
  ObjectSink(std::uint64_t size, std::span<const Piece> pieces, std::uint64_t base,
             const Write& write)
      : size_(size), pieces_(pieces), base_(base), write_(write) {}

  void put(const std::byte* data, std::size_t len, std::uint64_t at) override {
    for_each_piece(
        pieces_, data, len, base_ + at, [&](const std::byte* src, std::size_t n, std::uint64_t to) {
          if (to < size_)
            write_(src, static_cast<std::size_t>(std::min<std::uint64_t>(n, size_ - to)), to);
        });
  }

 private:
  const std::uint64_t size_;
  const std::span<const Piece> pieces_;
  const std::uint64_t base_;  // stream offset of the delivery's first byte
  const Write& write_;
};

}  // namespace

void ParentChain::fill_ranges(const std::function<const std::vector<Seg>*(Link&)>& segs_of,
                              std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges,
                              const std::function<void(Link&, PageReader&, std::span<const Piece>,
                                                       std::uint64_t, std::uint64_t)>& deliver) {
  for (auto& link : links_) {
    if (ranges.empty()) return;
    const std::vector<Seg>* found = segs_of(*link);
    if (!found) return;  // not in this link: no data
    const std::vector<Seg>& segs = *found;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> further;
    std::vector<Piece> pieces;
    // Ranges and segments are both ascending: one sweep over the two (a binary search
    // per range took ~35 ms over the ~200,000 ranges of a 9-link chain of random
    // rewrites).
    auto s = segs.begin();
    for (auto [a, b] : ranges) {
      while (s != segs.end() && s->end <= a) ++s;
      for (auto t = s; t != segs.end() && t->start < b; ++t) {
        const std::uint64_t from = std::max(a, t->start), to = std::min(b, t->end);
        if (t->off == kNoData) {
          further.emplace_back(from, to);
          continue;
        }
        const std::uint64_t off = t->off + (from - t->start);
        if (!pieces.empty() && pieces.back().off + pieces.back().len == off &&
            pieces.back().addr + pieces.back().len == from)
          pieces.back().len += to - from;  // contiguous on both sides
        else
          pieces.push_back({off, from, to - from});
      }
    }
    ranges = std::move(further);
    if (pieces.empty()) continue;
    // Sorted by stream offset, which the sinks look pieces up by (the stream is in
    // address order within a process, so this is mostly a check).
    auto by_off = [](const Piece& x, const Piece& y) { return x.off < y.off; };
    if (!std::is_sorted(pieces.begin(), pieces.end(), by_off))
      std::sort(pieces.begin(), pieces.end(), by_off);
    const std::uint64_t lo = pieces.front().off;
    std::uint64_t hi = lo;
    for (const Piece& p : pieces) hi = std::max(hi, p.off + p.len);
    // One delivery from the first piece to the end of the last: chunks decode on two
    // threads, zero-copy from the page cache (PageReader::deliver). A reader made for
    // it, not kept: its buffers go to the next link's (a process's pieces rarely share
    // a chunk with the next process's, and a new reader decodes nothing ahead).
    deliver(*link, *link->reader->pages_at(lo, buffers_), pieces, lo, hi);
  }
}

void ParentChain::fill(int pid, pid_t host_pid,
                       std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges) {
  fill_ranges(
      [&](Link& l) -> const std::vector<Seg>* {
        auto it = l.segs.find(pid);
        return it == l.segs.end() ? nullptr : &it->second;
      },
      std::move(ranges),
      [&](Link& l, PageReader& pages, std::span<const Piece> pieces, std::uint64_t lo,
          std::uint64_t hi) {
        ScatterSink sink(pid, host_pid, pieces, lo, l.dir);
        pages.deliver(hi - lo, sink);
      });
}

void ParentChain::fill_key(const std::string& key, std::uint64_t size,
                           const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs,
                           const ObjectWrite& write) {
  std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges;
  for (auto [first, count] : runs) ranges.emplace_back(first * kPage, (first + count) * kPage);
  fill_ranges(
      [&](Link& l) -> const std::vector<Seg>* {
        auto it = l.objects.find(key);
        return it == l.objects.end() ? nullptr : &it->second;
      },
      std::move(ranges),
      [&](Link&, PageReader& pages, std::span<const Piece> pieces, std::uint64_t lo,
          std::uint64_t hi) {
        ObjectSink sink(size, pieces, lo, write);
        pages.deliver(hi - lo, sink);
      });
}

void ParentChain::fill_object(const std::string& key, int fd, std::uint64_t size,
                              const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs) {
  const std::string what = "shared memory object or deleted file " + key;
  fill_key(key, size, runs, [&](const std::byte* src, std::size_t n, std::uint64_t to) {
    if (::pwrite(fd, src, n, static_cast<off_t>(to)) != static_cast<ssize_t>(n))
      fail_errno("{}: writing {} bytes at {} from a parent image", what, n, to);
  });
}

void ParentChain::fill_memory(const std::string& key, std::byte* base, std::uint64_t size,
                              const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs) {
  // The kernel's copy (process_vm_writev(2) to ourselves), as PageSink asks: `src` may
  // be a page of pages.img's mapping, which a memcpy would turn into SIGBUS if the file
  // lost it.
  fill_key(key, size, runs, [&](const std::byte* src, std::size_t n, std::uint64_t to) {
    iovec local{const_cast<std::byte*>(src), n}, remote{base + to, n};
    if (::process_vm_writev(::getpid(), &local, 1, &remote, 1, 0) != static_cast<ssize_t>(n))
      fail_errno("SysV segment {}: writing {} bytes at offset {} from a parent image", key, n, to);
  });
}

}  // namespace fsched::ckpt
