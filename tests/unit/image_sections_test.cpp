// Unit tests of the page stream's sections (src/ckpt/sections.h): the writer records
// where each starts, the reader checks a restore's position against that, and
// validate_manifest() checks the list, on real images in a temporary directory.
#include <stdlib.h>
#include <xxhash.h>

#include <cstddef>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <span>
#include <string>
#include <vector>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "ckpt/image.h"
#include "ckpt/manifest.h"
#include "ckpt/validate.h"
#include "ckpt/sections.h"
#include "common/error.h"

namespace fsched::ckpt {
namespace {

namespace fs = std::filesystem;
using json = nlohmann::json;
using ::testing::AllOf;
using ::testing::HasSubstr;

class TempDir {
 public:
  TempDir() {
    std::string tmpl = "/tmp/fsched_sections_test.XXXXXX";
    if (!::mkdtemp(tmpl.data())) throw std::runtime_error("mkdtemp failed");
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// The ImageError thrown by f, or a note that none was.
std::string image_error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const ImageError& e) {
    return e.what();
  } catch (const std::exception& e) {
    return std::string("(not an ImageError: ") + e.what() + ")";
  }
  return "(no ImageError thrown)";
}

std::vector<std::byte> bytes(std::size_t n, char c) {
  return std::vector<std::byte>(n, std::byte(c));
}

// An image with every section; section i holds sizes[i] bytes of the letter 'a' + i
// (none past the end of sizes).
void write_sectioned(const fs::path& dir, const std::vector<std::size_t>& sizes) {
  auto w = ImageWriter::create(dir, 1);
  for (std::size_t i = 0; i < kSectionOrder.size(); ++i) {
    w->begin_section(kSectionOrder[i]);
    w->append_pages(bytes(i < sizes.size() ? sizes[i] : 0, static_cast<char>('a' + i)));
  }
  w->commit(json::object());
}

TEST(Sections, NamesRoundTripInOrder) {
  std::vector<std::string> names;
  for (Section s : kSectionOrder) {
    names.emplace_back(section_name(s));
    EXPECT_EQ(section_from_name(section_name(s)), s);
  }
  EXPECT_EQ(names, (std::vector<std::string>{"shm", "deleted_files", "sysv_shm", "pages", "pipes",
                                             "sockets", "page_hashes"}));
  EXPECT_FALSE(section_from_name("memory").has_value());
}

TEST(Sections, WriterRecordsEachStart) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_sectioned(dir, {3, 0, 5, 4096, 0, 7});
  auto r = ImageReader::open(dir);
  EXPECT_EQ(r->manifest()["sections"],
            json::parse(R"([{"name":"shm","offset":0},{"name":"deleted_files","offset":3},
                            {"name":"sysv_shm","offset":3},{"name":"pages","offset":8},
                            {"name":"pipes","offset":4104},{"name":"sockets","offset":4104},
                            {"name":"page_hashes","offset":4111}])"));
  EXPECT_EQ(r->manifest()["format_version"], kImageFormatVersion);
}

TEST(Sections, WriterRefusesAnotherOrder) {
  TempDir tmp;
  auto w = ImageWriter::create(tmp.path() / "img", 1);
  w->begin_section(Section::kShm);
  w->begin_section(Section::kPages);
  EXPECT_THROW(w->begin_section(Section::kSysvShm), Error);
}

TEST(Sections, ReaderChecksThePositionOfEachSection) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_sectioned(dir, {3, 0, 5, 10, 2, 1});
  auto r = ImageReader::open(dir);
  r->verify_chunks();
  auto p = r->pages();
  std::vector<std::byte> buf(64);
  p->enter_section(Section::kShm);
  p->read(std::span(buf).first(3));
  p->enter_section(Section::kDeletedFiles);
  p->enter_section(Section::kSysvShm);
  p->read(std::span(buf).first(5));
  EXPECT_EQ(p->position(), 8u);
  p->enter_section(Section::kPages);
  // A part of "pages" that reads one byte too few: "pipes" is entered at 17, not 18.
  p->read(std::span(buf).first(9));
  EXPECT_EQ(image_error_of([&] { p->enter_section(Section::kPipes); }),
            fmt::format("{}: page-stream section \"pipes\" starts at stream offset 18 in the "
                        "manifest, but the restore reached it at offset 17: the sections before "
                        "it were read with other sizes than they were dumped",
                        (dir / "pages.img").string()));
}

TEST(Sections, UnknownSectionNameRefusedAtOpen) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_sectioned(dir, {1, 1, 1, 1, 1, 1});
  json m = json::parse(std::ifstream(dir / "manifest.json"));
  m["sections"][2]["name"] = "sysv";
  std::string text = m.dump(1);
  std::ofstream(dir / "manifest.json", std::ios::trunc) << text;
  // Re-checksum it as a buggy dumper would; no key, so no HMAC to break.
  char hex[17];
  std::snprintf(hex, sizeof hex, "%016llx",
                static_cast<unsigned long long>(XXH3_64bits(text.data(), text.size())));
  std::ofstream(dir / "manifest.xxh3", std::ios::trunc) << hex << "\n";
  EXPECT_THAT(image_error_of([&] { ImageReader::open(dir); }),
              AllOf(HasSubstr("section 2"), HasSubstr("unknown section \"sysv\"")));
}

// The class of a failure reaches the caller: a bad image is FailureClass::kImage, a
// directory that is not there (storage not mounted on this node?) stays transient.
TEST(ImageErrorClass, BadImagesAreImageErrors) {
  TempDir tmp;
  fs::path dir = tmp.path() / "img";
  write_sectioned(dir, {1, 1, 1, 5u << 20, 1, 1});
  auto class_of = [](const std::function<void()>& f) {
    try {
      f();
    } catch (const Error& e) {
      return e.failure_class();
    }
    ADD_FAILURE() << "no error";
    return FailureClass::kUsage;
  };
  EXPECT_EQ(class_of([&] { ImageReader::open(tmp.path() / "nope"); }), FailureClass::kTransient);
  {
    std::fstream f(dir / "pages.img", std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(100);
    f.put('\x5a');
  }
  auto r = ImageReader::open(dir);
  EXPECT_EQ(class_of([&] { r->verify_chunks(); }), FailureClass::kImage);
  std::ofstream(dir / "manifest.xxh3", std::ios::trunc) << "0000000000000000\n";
  EXPECT_EQ(class_of([&] { ImageReader::open(dir); }), FailureClass::kImage);
  std::ofstream(dir / "manifest.xxh3", std::ios::trunc) << "zz\n";
  EXPECT_EQ(class_of([&] { ImageReader::open(dir); }), FailureClass::kImage);
  fs::remove(dir / "manifest.json");
  EXPECT_EQ(class_of([&] { ImageReader::open(dir); }), FailureClass::kImage);
}

// A manifest whose only stream data are 10 bytes in a pipe and 5 queued on a socket.
Manifest small_manifest() {
  Manifest m;
  Process p;
  p.pid = 1;
  p.zombie = true;
  m.processes.push_back(p);
  m.pipes.push_back({42, 65536, 10, ""});
  UnixSocket s;
  s.ino = 7;
  s.peer = 8;
  s.queued = {5};
  m.sockets.push_back(s);
  m.sections = {{"shm", 0},   {"deleted_files", 0}, {"sysv_shm", 0},
                {"pages", 0}, {"pipes", 0},         {"sockets", 10}};
  return m;
}

TEST(Sections, ValidateAcceptsWhatADumpWrites) {
  EXPECT_NO_THROW(validate_manifest(small_manifest(), 15));
}

// An image before format 11 (or one that hashed nothing) may end without
// "page_hashes"; one with hashed mappings must hold their hashes, 16 bytes a page.
TEST(Sections, PageHashesSectionMatchesTheHashedMappings) {
  Manifest m = small_manifest();
  m.sections.push_back({"page_hashes", 15});
  EXPECT_NO_THROW(validate_manifest(m, 15));
  Process& p = m.processes[0];
  p.zombie = false;
  p.uids = p.gids = {0, 0, 0, 0};
  p.threads.push_back({});
  p.threads[0].tid = 1;
  p.threads[0].regs.resize(27);
  Vma v;
  v.start = 0x10000;
  v.end = 0x20000;
  v.runs = {{0, 1}};
  v.parent_runs = {{2, 3}};
  v.track = TrackMethod::kHash;
  p.vmas.push_back(v);
  // "pages" holds one page, "page_hashes" four hashes.
  m.sections = {{"shm", 0},      {"deleted_files", 0}, {"sysv_shm", 0},      {"pages", 0},
                {"pipes", 4096}, {"sockets", 4106},    {"page_hashes", 4111}};
  EXPECT_NO_THROW(validate_manifest(m, 4111 + 64));
  EXPECT_THAT(image_error_of([&] { validate_manifest(m, 4111 + 48); }),
              HasSubstr("its parts hold 4175 bytes of page data, the page stream has 4159"));
  m.sections.pop_back();
  EXPECT_THAT(image_error_of([&] { validate_manifest(m, 4111 + 64); }),
              HasSubstr("6 page-stream sections, expected 7 (\"page_hashes\" missing)"));
}

// A SysV segment taken partly from the parent (format 12): its stored pages in
// "sysv_shm", with hashes one per page of runs and parent_runs in "page_hashes"; a
// parent run past the segment is refused.
TEST(Sections, SysvSegmentRunsAndHashesAddUp) {
  Manifest m = small_manifest();
  SysvShm s;
  s.id = 3;
  s.size = 5 * 4096 - 100;  // 5 pages, the last one partly
  s.runs = {{0, 1}};
  s.parent_runs = {{1, 4}};
  s.track = TrackMethod::kHash;
  m.sysv_shm.push_back(s);
  m.sections = {{"shm", 0},      {"deleted_files", 0}, {"sysv_shm", 0},      {"pages", 4096},
                {"pipes", 4096}, {"sockets", 4106},    {"page_hashes", 4111}};
  EXPECT_NO_THROW(validate_manifest(m, 4111 + 5 * 16));
  EXPECT_THAT(image_error_of([&] { validate_manifest(m, 4111 + 16); }),
              HasSubstr("the page stream has 4127"));
  m.sysv_shm[0].parent_runs = {{1, 5}};
  EXPECT_THAT(image_error_of([&] { validate_manifest(m, 4111 + 6 * 16); }),
              HasSubstr("SysV segment 3 (parent): page run 1+5 outside its 5 pages"));
  // Without hashes the segment adds nothing to "page_hashes".
  m.sysv_shm[0].parent_runs = {{1, 4}};
  m.sysv_shm[0].track = TrackMethod::kNone;
  m.sections.pop_back();
  EXPECT_NO_THROW(validate_manifest(m, 4111));
}

TEST(Sections, ValidateRefusesAnotherOrder) {
  Manifest m = small_manifest();
  std::swap(m.sections[4], m.sections[5]);
  EXPECT_THAT(image_error_of([&] { validate_manifest(m, 15); }),
              HasSubstr("page-stream section 4 is \"sockets\", expected \"pipes\""));
}

TEST(Sections, ValidateRefusesAnUnknownName) {
  Manifest m = small_manifest();
  m.sections[0].name = "shmem";
  EXPECT_THAT(image_error_of([&] { validate_manifest(m, 15); }),
              HasSubstr("page-stream section 0: unknown name \"shmem\""));
}

TEST(Sections, ValidateRefusesAMissingSection) {
  Manifest m = small_manifest();
  m.sections.pop_back();
  EXPECT_THAT(image_error_of([&] { validate_manifest(m, 15); }),
              HasSubstr("5 page-stream sections, expected 7 (\"sockets\" missing)"));
  m.sections.clear();  // an image without sections at all
  EXPECT_THAT(image_error_of([&] { validate_manifest(m, 15); }), HasSubstr("\"shm\" missing"));
}

TEST(Sections, ValidateRefusesOffsetsGoingBack) {
  Manifest m = small_manifest();
  m.sections[4].offset = 12;
  EXPECT_THAT(image_error_of([&] { validate_manifest(m, 15); }),
              HasSubstr("section \"sockets\" starts at offset 10, before the one before it (12)"));
  m = small_manifest();
  m.sections[3].offset = 2;  // pages after pipes' start
  m.sections[4].offset = 1;
  EXPECT_THAT(image_error_of([&] { validate_manifest(m, 15); }),
              HasSubstr("section \"pipes\" starts at offset 1, before the one before it (2)"));
}

TEST(Sections, ValidateRefusesAStartPastTheEnd) {
  Manifest m = small_manifest();
  m.sections[5].offset = 16;
  EXPECT_THAT(
      image_error_of([&] { validate_manifest(m, 15); }),
      HasSubstr("section \"sockets\" starts at offset 16, past the end of the stream (15)"));
}

TEST(Sections, ValidateRefusesASectionOfTheWrongSize) {
  Manifest m = small_manifest();
  m.sections[5].offset = 9;  // the pipes' 10 bytes squeezed into 9
  EXPECT_THAT(image_error_of([&] { validate_manifest(m, 15); }),
              HasSubstr("section \"pipes\" spans 9 bytes (offset 0 to 9), its parts hold 10"));
}

// Files in flight (scm_rights.h) must name a message that exists, a process of the
// image or an entry of Manifest::in_flight that can be opened by path.
TEST(Sections, ValidateChecksFilesInFlight) {
  Manifest m = small_manifest();
  Fd f;
  f.kind = FdKind::kFile;
  f.path = "/tmp/x";
  m.in_flight.push_back(f);
  m.sockets[0].rights = {ScmRights{.msg = 0,
                                   .fds = {InFlightFd{.pid = 1, .fd = 3, .file = -1},
                                           InFlightFd{.pid = 0, .fd = -1, .file = 0}}}};
  EXPECT_NO_THROW(validate_manifest(m, 15));
  Manifest bad = m;
  bad.sockets[0].rights[0].msg = 1;  // one message queued
  EXPECT_THAT(image_error_of([&] { validate_manifest(bad, 15); }),
              HasSubstr("files in flight in message 1 of 1"));
  bad = m;
  bad.sockets[0].rights[0].fds[0].pid = 9;
  EXPECT_THAT(image_error_of([&] { validate_manifest(bad, 15); }),
              HasSubstr("a file in flight names process 9"));
  bad = m;
  bad.sockets[0].rights[0].fds[1].file = 1;
  EXPECT_THAT(image_error_of([&] { validate_manifest(bad, 15); }), HasSubstr("/ file 1"));
  bad = m;
  bad.in_flight[0].kind = FdKind::kPipe;
  EXPECT_THAT(image_error_of([&] { validate_manifest(bad, 15); }),
              HasSubstr("a file in flight: kind pipe"));
  bad = m;
  bad.in_flight[0].path = "relative";
  EXPECT_THAT(image_error_of([&] { validate_manifest(bad, 15); }), HasSubstr("path relative"));
}

// Locks are written as arrays since format 6; the objects of formats 3 to 5 still read.
TEST(ManifestJson, FileLocksAsArraysAndObjects) {
  FileLock l{.kind = LockKind::kPosix, .write = true, .start = 4, .end = 9, .to_eof = false};
  json j = l;
  EXPECT_EQ(j, json::parse(R"(["posix", true, 4, 9, false])"));
  EXPECT_EQ(j.get<FileLock>(), l);
  EXPECT_EQ(
      json::parse(R"({"kind": "posix", "write": true, "start": 4, "end": 9, "to_eof": false})")
          .get<FileLock>(),
      l);
  FileLock flock{.kind = LockKind::kFlock, .write = false, .start = 0, .end = 0, .to_eof = true};
  EXPECT_EQ(json::parse(R"({"kind": "flock"})").get<FileLock>(), flock);
  EXPECT_THROW(json::parse(R"(["posix", true, 4])").get<FileLock>(), json::exception);
}

}  // namespace
}  // namespace fsched::ckpt
