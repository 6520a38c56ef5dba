// Per-page hashes of an image (page_hashes.h).
#include "ckpt/page_hashes.h"

#include <algorithm>
#include <cstring>

#include "ckpt/sections.h"
#include "ckpt/xxh3.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {
constexpr std::uint64_t kPage = 4096;
}  // namespace

PageHash hash_page(const std::byte* page) {
  XXH128_canonical_t c;
  XXH128_canonicalFromHash(&c, XXH3_128bits(page, kPage));
  PageHash h;
  static_assert(sizeof c.digest == kPageHashBytes);
  std::memcpy(h.data(), c.digest, kPageHashBytes);
  return h;
}

ParentHashes ParentHashes::load(const ImageReader& reader, const Manifest& m) {
  ParentHashes out;
  const std::string who = reader.path().string();
  std::uint64_t start = ~0ULL;
  for (const SectionStart& s : m.sections)
    if (s.name == section_name(Section::kPageHashes)) start = s.offset;
  std::unique_ptr<PageReader> pages;
  // Reads the hashes of one hashed mapping or object of `npages` pages: one per page of
  // runs and parent_runs merged in page order, appended to `list` keyed by base +
  // page * unit: an address for a mapping, the page index for an object.
  auto read_hashes = [&](List& list, std::uint64_t base, std::uint64_t unit, std::uint64_t npages,
                         const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs,
                         const std::vector<std::pair<std::uint64_t, std::uint64_t>>& parent_runs,
                         const std::string& what) {
    if (!pages) {
      if (start == ~0ULL) fail_image("{}: hashed pages but no page_hashes section", who);
      pages = reader.pages();
      pages->skip_to(start);
    }
    for (const auto* rr : {&runs, &parent_runs})
      for (auto [first, count] : *rr)
        if (first > npages || count > npages - first)
          fail_image("{}: {}: page run {}+{} beyond its {} pages", who, what, first, count, npages);
    if (!list.empty() && list.back().first >= base) fail_image("{}: {}: out of order", who, what);
    const std::size_t first_new = list.size();
    std::size_t i = 0, j = 0;
    while (i < runs.size() || j < parent_runs.size()) {
      const bool take_run =
          j == parent_runs.size() || (i < runs.size() && runs[i].first < parent_runs[j].first);
      auto [first, count] = take_run ? runs[i++] : parent_runs[j++];
      for (std::uint64_t k = 0; k < count; ++k) {
        PageHash h;
        pages->read(std::as_writable_bytes(std::span(h)));
        list.emplace_back(base + (first + k) * unit, h);
      }
    }
    for (std::size_t k = first_new + 1; k < list.size(); ++k)
      if (list[k].first <= list[k - 1].first) fail_image("{}: {}: page runs overlap", who, what);
  };
  // The section's order: the shared memory objects, the deleted files, each process's
  // mappings, then the SysV segments. Objects, files and segments share one key space
  // (a file that is both is stored once, as the object; segments are "sysv:ID").
  auto object = [&](const std::string& key, std::uint64_t size,
                    const std::vector<std::pair<std::uint64_t, std::uint64_t>>& runs,
                    const std::vector<std::pair<std::uint64_t, std::uint64_t>>& parent_runs,
                    const std::string& what) {
    auto [it, fresh] = out.by_object_.try_emplace(key);
    if (!fresh) fail_image("{}: {} twice", who, what);
    out.object_size_[key] = size;
    read_hashes(it->second, 0, 1, (size + kPage - 1) / kPage, runs, parent_runs, what);
  };
  for (const ShmObject& o : m.shm)
    if (o.track == TrackMethod::kHash)
      object(o.key, o.size, o.runs, o.parent_runs, "shared memory object " + o.key);
  for (const DeletedFile& d : m.deleted_files)
    if (d.track == TrackMethod::kHash)
      object(d.key, d.size, d.runs, d.parent_runs, "deleted file " + d.key);
  for (const Process& p : m.processes) {
    if (p.zombie) continue;
    for (const Vma& v : p.vmas) {
      if (v.track != TrackMethod::kHash) continue;
      if (v.end <= v.start) fail_image("{}: process {}: empty mapping", who, p.pid);
      read_hashes(out.by_pid_[p.pid], v.start, kPage, (v.end - v.start) / kPage, v.runs,
                  v.parent_runs, fmt::format("process {} mapping {:#x}", p.pid, v.start));
      out.any_mappings_ = true;
    }
  }
  for (const SysvShm& s : m.sysv_shm)
    if (s.track == TrackMethod::kHash)
      object(sysv_object_key(s.id), s.size, s.runs, s.parent_runs,
             fmt::format("SysV segment {}", s.id));
  // The section is the stream's last: its parts account for all of it.
  const std::uint64_t end = reader.manifest().value("pages_logical_bytes", std::uint64_t{0});
  if (pages && pages->position() != end)
    fail_image("{}: the page_hashes section holds {} bytes, its parts' pages need {}", who,
               end - start, pages->position() - start);
  return out;
}

ParentHashes::Cursor ParentHashes::object_cursor(const std::string& key) const {
  Cursor c;
  auto it = by_object_.find(key);
  if (it == by_object_.end()) return c;
  c.it_ = it->second.data();
  c.end_ = c.it_ + it->second.size();
  return c;
}

ParentHashes::Cursor ParentHashes::object_cursor(const std::string& key, std::uint64_t size) const {
  auto it = object_size_.find(key);
  if (it == object_size_.end() || it->second != size) return Cursor{};
  return object_cursor(key);
}

ParentHashes::Cursor ParentHashes::cursor(int pid) const {
  Cursor c;
  auto it = by_pid_.find(pid);
  if (it == by_pid_.end()) return c;
  c.it_ = it->second.data();
  c.end_ = c.it_ + it->second.size();
  return c;
}

const PageHash* ParentHashes::Cursor::find(std::uint64_t addr) {
  // A few steps forward first: the pages asked for are mostly the next ones.
  for (int step = 0; step < 8 && it_ != end_ && it_->first < addr; ++step) ++it_;
  if (it_ != end_ && it_->first < addr)
    it_ = std::lower_bound(it_, end_, addr,
                           [](const Entry& e, std::uint64_t a) { return e.first < a; });
  if (it_ != end_ && it_->first == addr) return &it_->second;
  return nullptr;
}

}  // namespace fsched::ckpt
