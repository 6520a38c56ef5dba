// Per-page hashes (page_hashes.h): what a dump writes in the "page_hashes" section is
// read back by process and address, and by shared memory object and page; a section
// that does not match its mappings is refused.
#include "ckpt/page_hashes.h"

#include <stdlib.h>

#include <filesystem>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "ckpt/sections.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class TempDir {
 public:
  TempDir() {
    std::string t = (fs::temp_directory_path() / "fsched_hashes_test.XXXXXX").string();
    if (!::mkdtemp(t.data())) throw std::runtime_error("mkdtemp");
    path_ = t;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

std::vector<std::byte> page_of(char c) { return std::vector<std::byte>(4096, std::byte(c)); }

// An image whose shm object "0:9" holds pages 0 and 2 (page 1 from its parent), whose
// process 1 has a hashed mapping at 0x10000 with pages 0-1 stored and 3 from the
// parent, and an unhashed one, and whose SysV segment 3 (2 pages) holds page 1 (page 0
// from its parent): the hashes of pages 'a'..'h', the segment's last (after the
// mappings'). `drop` bytes are left out of the section.
struct Built {
  Manifest m;
  std::unique_ptr<ImageReader> reader;
};
Built build(const fs::path& dir, std::size_t drop = 0) {
  Manifest m;
  ShmObject o;
  o.key = "0:9";
  o.size = 3 * 4096;
  o.runs = {{0, 1}, {2, 1}};
  o.parent_runs = {{1, 1}};
  o.track = TrackMethod::kHash;
  m.shm.push_back(o);
  Process p;
  p.pid = 1;
  Vma v;
  v.start = 0x10000;
  v.end = 0x20000;
  v.runs = {{0, 2}};
  v.parent_runs = {{3, 1}};
  v.track = TrackMethod::kHash;
  p.vmas.push_back(v);
  Vma plain;
  plain.start = 0x30000;
  plain.end = 0x31000;
  plain.runs = {{0, 1}};
  p.vmas.push_back(plain);
  m.processes.push_back(p);
  SysvShm seg;
  seg.id = 3;
  seg.size = 2 * 4096;
  seg.runs = {{1, 1}};
  seg.parent_runs = {{0, 1}};
  seg.track = TrackMethod::kHash;
  m.sysv_shm.push_back(seg);

  auto w = ImageWriter::create(dir, 1);
  std::vector<std::byte> hashes;
  for (char c : std::string("abcdefgh")) {
    PageHash h = hash_page(page_of(c).data());
    hashes.insert(hashes.end(), h.begin(), h.end());
  }
  hashes.resize(hashes.size() - drop);
  for (Section s : kSectionOrder) {
    w->begin_section(s);
    if (s == Section::kShm) w->append_pages(std::vector<std::byte>(2 * 4096));
    if (s == Section::kSysvShm) w->append_pages(std::vector<std::byte>(4096));
    if (s == Section::kPages) w->append_pages(std::vector<std::byte>(3 * 4096));
    if (s == Section::kPageHashes) w->append_pages(hashes);
  }
  w->commit(nlohmann::json(m));
  Built b;
  b.reader = ImageReader::open(dir);
  b.m = b.reader->manifest().get<Manifest>();
  return b;
}

TEST(PageHashes, ReadBackByAddressAndByObjectPage) {
  TempDir tmp;
  Built b = build(tmp.path() / "img");
  ParentHashes h = ParentHashes::load(*b.reader, b.m);
  EXPECT_TRUE(h.any_mappings());
  auto is = [](const PageHash* got, char c) { return got && *got == hash_page(page_of(c).data()); };
  // The object: pages 0, 1 (parent), 2 in page order: 'a', 'b', 'c'.
  auto oc = h.object_cursor("0:9");
  EXPECT_TRUE(is(oc.find(0), 'a'));
  EXPECT_TRUE(is(oc.find(1), 'b'));
  EXPECT_TRUE(is(oc.find(2), 'c'));
  EXPECT_EQ(oc.find(3), nullptr);
  EXPECT_EQ(h.object_cursor("0:10").find(0), nullptr);
  // The mapping: pages 0, 1, 3 by address; page 2 and the unhashed mapping have none.
  auto pc = h.cursor(1);
  EXPECT_TRUE(is(pc.find(0x10000), 'd'));
  EXPECT_TRUE(is(pc.find(0x11000), 'e'));
  EXPECT_EQ(pc.find(0x12000), nullptr);
  EXPECT_TRUE(is(pc.find(0x13000), 'f'));
  EXPECT_EQ(pc.find(0x30000), nullptr);
  EXPECT_EQ(h.cursor(2).find(0x10000), nullptr);
  // The segment, by page index, after the mappings: 'g' (parent), 'h'; only while
  // its size is the one asked for (an id given to a new segment of another size).
  auto sc = h.object_cursor(sysv_object_key(3), 2 * 4096);
  EXPECT_TRUE(is(sc.find(0), 'g'));
  EXPECT_TRUE(is(sc.find(1), 'h'));
  EXPECT_EQ(h.object_cursor(sysv_object_key(3), 3 * 4096).find(0), nullptr);
  EXPECT_EQ(h.object_cursor(sysv_object_key(4), 2 * 4096).find(0), nullptr);
  // Not 'e' written over: different pages hash differently.
  EXPECT_FALSE(hash_page(page_of('d').data()) == hash_page(page_of('e').data()));
}

TEST(PageHashes, SectionShorterThanItsMappingsRefused) {
  TempDir tmp;
  Built b = build(tmp.path() / "img", 16);
  try {
    ParentHashes::load(*b.reader, b.m);
    FAIL() << "a short page_hashes section was read";
  } catch (const ImageError& e) {
    EXPECT_THAT(e.what(), HasSubstr("past the end of the page stream"));
  }
}

TEST(PageHashes, RunPastItsMappingRefused) {
  TempDir tmp;
  Built b = build(tmp.path() / "img");
  b.m.processes[0].vmas[0].parent_runs = {{3, 14}};
  try {
    ParentHashes::load(*b.reader, b.m);
    FAIL() << "a run past its mapping was read";
  } catch (const ImageError& e) {
    EXPECT_THAT(e.what(), HasSubstr("page run 3+14 beyond its 16 pages"));
  }
}

TEST(PageHashes, ImageWithoutHashesGivesAnEmptyTable) {
  TempDir tmp;
  Built b = build(tmp.path() / "img");
  b.m.shm[0].track = TrackMethod::kNone;
  b.m.processes[0].vmas[0].track = TrackMethod::kNone;
  b.m.sysv_shm[0].track = TrackMethod::kNone;
  ParentHashes h = ParentHashes::load(*b.reader, b.m);
  EXPECT_FALSE(h.any_mappings());
  EXPECT_EQ(h.cursor(1).find(0x10000), nullptr);
}

TEST(TrackMethod, NamesRoundTripAndUnknownRefused) {
  for (auto& [m, name] : kTrackMethodNames) {
    nlohmann::json j = m;
    EXPECT_EQ(j, std::string(name));
    EXPECT_EQ(j.get<TrackMethod>(), m);
  }
  EXPECT_THROW(nlohmann::json("soft-dirty").get<TrackMethod>(), ImageError);
  EXPECT_THROW(nlohmann::json(1).get<TrackMethod>(), ImageError);
}

}  // namespace
}  // namespace fsched::ckpt
