// The parent chain of an incremental image (parent_chain.h).
#include "ckpt/parent_chain.h"

#include <sys/uio.h>

#include <algorithm>
#include <set>

#include "ckpt/vma_kind.h"
#include "common/error.h"

namespace fsched::ckpt {

constexpr std::uint64_t kPage = 4096;
constexpr std::uint64_t kNoData = ~0ULL;  // a segment the link takes from its own parent

// One stretch of a process's address space in one link: stored at `off` in the link's
// page stream, or (off == kNoData) taken from the link's parent.
struct Seg {
  std::uint64_t start, end, off;
};

struct ParentChain::Link {
  std::filesystem::path dir;
  std::unique_ptr<ImageReader> reader;
  Manifest m;
  std::map<int, std::vector<Seg>> segs;  // by pid in the job, sorted by start
  std::unique_ptr<PageReader> pages;     // forward-only; reopened to go back
  std::vector<std::byte> skip;

  // Reads `out.size()` bytes at stream offset `off`.
  void read_at(std::uint64_t off, std::span<std::byte> out) {
    if (!pages || pages->position() > off) pages = reader->pages();
    while (pages->position() < off) {
      const std::uint64_t gap = off - pages->position();
      pages->next(static_cast<std::size_t>(std::min<std::uint64_t>(gap, kChunkRawBytes)));
    }
    pages->read(out);
  }
};

ParentChain::~ParentChain() = default;

std::filesystem::path parent_dir(const std::filesystem::path& dir, const Manifest& m) {
  std::filesystem::path p(m.parent.dir);
  if (p.empty()) fail_image("{}: an incremental image that names no parent", dir.string());
  return p.is_absolute() ? p : dir.parent_path() / p;
}

namespace {

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
      for (auto [first, count] : v.runs) {
        if (first > (v.end - v.start) / kPage || count > (v.end - v.start) / kPage - first)
          fail_image("{}: page run beyond mapping {:#x}-{:#x}", dir.string(), v.start, v.end);
        segs.push_back({v.start + first * kPage, v.start + (first + count) * kPage, off});
        off += count * kPage;
      }
      for (auto [first, count] : v.parent_runs) {
        if (first > (v.end - v.start) / kPage || count > (v.end - v.start) / kPage - first)
          fail_image("{}: parent run beyond mapping {:#x}-{:#x}", dir.string(), v.start, v.end);
        segs.push_back({v.start + first * kPage, v.start + (first + count) * kPage, kNoData});
      }
    }
    std::sort(segs.begin(), segs.end(),
              [](const Seg& a, const Seg& b) { return a.start < b.start; });
    for (std::size_t i = 1; i < segs.size(); ++i)
      if (segs[i].start < segs[i - 1].end)
        fail_image("{}: process {}: page runs overlap at {:#x}", dir.string(), p.pid,
                   segs[i].start);
  }
  return out;
}

}  // namespace

std::unique_ptr<ParentChain> ParentChain::open(const std::filesystem::path& dir, const Manifest& m,
                                               std::span<const std::byte> key) {
  std::unique_ptr<ParentChain> chain(new ParentChain());
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
      link->reader->verify_chunks();
      link->m = link->reader->manifest().get<Manifest>();
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
    child_dir = link->dir;
    chain->links_.push_back(std::move(link));
    child = &chain->links_.back()->m;
  }
  return chain;
}

std::vector<std::filesystem::path> ParentChain::links() const {
  std::vector<std::filesystem::path> out;
  for (auto& l : links_) out.push_back(l->dir);
  return out;
}

void ParentChain::fill(int pid, pid_t host_pid,
                       std::vector<std::pair<std::uint64_t, std::uint64_t>> ranges) {
  std::vector<std::byte> buf;
  for (auto& link : links_) {
    if (ranges.empty()) return;
    std::vector<std::pair<std::uint64_t, std::uint64_t>> further;
    auto it = link->segs.find(pid);
    if (it == link->segs.end()) return;  // the process is not in this link: no data
    const std::vector<Seg>& segs = it->second;
    for (auto [a, b] : ranges) {
      // The segments overlapping [a, b), in order.
      auto s = std::upper_bound(segs.begin(), segs.end(), a,
                                [](std::uint64_t x, const Seg& g) { return x < g.start; });
      if (s != segs.begin() && std::prev(s)->end > a) --s;
      for (; s != segs.end() && s->start < b; ++s) {
        const std::uint64_t from = std::max(a, s->start), to = std::min(b, s->end);
        if (s->off == kNoData) {
          further.emplace_back(from, to);
          continue;
        }
        for (std::uint64_t at = from; at < to;) {
          const std::uint64_t n = std::min<std::uint64_t>(to - at, kChunkRawBytes);
          buf.resize(n);
          link->read_at(s->off + (at - s->start), buf);
          iovec local{buf.data(), n};
          iovec remote{reinterpret_cast<void*>(at), n};
          if (::process_vm_writev(host_pid, &local, 1, &remote, 1, 0) != static_cast<ssize_t>(n))
            fail_errno("process {}: writing the pages of {:#x}-{:#x} from parent image {}", pid, at,
                       at + n, link->dir.string());
          at += n;
        }
      }
    }
    ranges = std::move(further);
  }
}

}  // namespace fsched::ckpt
