// libFuzzer harness: the checkpoint image reader (ImageReader::open: manifest.json,
// manifest.xxh3, the format, the chunk table and the section list; verify_chunks(); the
// page stream through next() and deliver(), entering each section at the offset the
// manifest records as restore does; the manifest's mapping to ckpt::Manifest and
// validate_manifest() as restore and show do it).
//
// Input: manifest.json's bytes, then optionally a NUL byte and pages.img's bytes (no
// NUL: the image has no pages.img). The harness writes them into an image directory
// with a correct manifest.xxh3, so that the fuzzer gets past the checksum. So that it
// also gets past the chunk checksums, a chunk whose "xxh3" is the string "fill" gets
// the XXH3-64 of its stored bytes in pages.img (the manifest is then re-serialized).
// A bad image must end in fsched::ImageError naming the image's path (json::exception
// for the Manifest mapping, which restore turns into "malformed manifest"; an
// ImageError "image: ..." from validate_manifest()); anything else -- a transient
// fsched::Error, a section not entered at its recorded offset, a delivery that does not
// hand out each byte exactly once -- is a bug.
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "ckpt/image.h"
#include "ckpt/manifest.h"
#include "ckpt/sections.h"
#include "ckpt/validate.h"
#include "common/error.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

[[noreturn]] void bug(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_image: %s: %s\n", what, detail.c_str());
  std::abort();
}

const fs::path& image_dir() {
  static const fs::path dir = [] {
    // On tmpfs when there is one: on disk, writing the three files costs ~7x the rest.
    const char* t = std::getenv("TMPDIR");
    std::string base = ::access("/dev/shm", W_OK) == 0 ? "/dev/shm" : t && *t ? t : "/tmp";
    std::string tmpl = base + "/fsched-fuzz-image.XXXXXX";
    if (!::mkdtemp(tmpl.data())) bug("mkdtemp", tmpl);
    fs::path d = fs::path(tmpl) / "img";
    fs::create_directory(d);
    // Removed at exit (a crash leaves it in TMPDIR; it is small). The handler runs after
    // `dir` is destroyed: it has its own copy of the name.
    static const char* top = strdup(tmpl.c_str());
    std::atexit([] {
      std::error_code ec;
      fs::remove_all(top, ec);
    });
    return d;
  }();
  return dir;
}

void write_file(const fs::path& p, std::string_view data) {
  int fd = ::open(p.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) bug("cannot create", p.native());
  for (size_t done = 0; done < data.size();) {
    ssize_t w = ::write(fd, data.data() + done, data.size() - done);
    if (w <= 0) bug("cannot write", p.native());
    done += static_cast<size_t>(w);
  }
  ::close(fd);
}

// Chunks whose "xxh3" is "fill" get the hash of their bytes in `pages`.
std::string fill_hashes(const std::string& text, std::string_view pages) {
  json m = json::parse(text, nullptr, false);
  if (!m.is_object() || !m.contains("chunks") || !m["chunks"].is_array()) return text;
  for (json& c : m["chunks"]) {
    if (!c.is_object() || c.value("xxh3", json()) != "fill") continue;
    uint64_t h = 0;
    if (c.contains("offset") && c["offset"].is_number_unsigned() && c.contains("stored") &&
        c["stored"].is_number_unsigned()) {
      uint64_t off = c["offset"].get<uint64_t>(), n = c["stored"].get<uint64_t>();
      if (off <= pages.size() && n <= pages.size() - off) h = XXH3_64bits(pages.data() + off, n);
    }
    c["xxh3"] = fmt::format("{:016x}", h);
  }
  return m.dump();
}

void check_error(const fsched::Error& e, const char* step) {
  if (!dynamic_cast<const fsched::ImageError*>(&e))
    bug(step, fmt::format("a bad image that is not an ImageError: {}", e.what()));
  if (std::string_view(e.what()).find(image_dir().native()) == std::string_view::npos)
    bug(step, fmt::format("error does not name the image: {}", e.what()));
}

// Where the manifest says section s starts: its first entry in "sections" (open()
// checked that the list is well-formed), as PageReader::enter_section() looks it up.
std::optional<uint64_t> recorded_start(const json& m, fsched::ckpt::Section s) {
  for (const json& e : m.at("sections"))
    if (e.at("name").get_ref<const std::string&>() == fsched::ckpt::section_name(s))
      return e.at("offset").get<uint64_t>();
  return std::nullopt;
}

// Checks that a delivery of `len` bytes puts each byte exactly once, within [0, len).
class CountingSink final : public fsched::ckpt::PageSink {
 public:
  explicit CountingSink(uint64_t len) : len_(len) {}
  void put(const std::byte* data, size_t n, uint64_t at) override {
    if (n == 0 || !data) bug("deliver", "empty put");
    if (at > len_ || n > len_ - at)
      bug("deliver", fmt::format("put of {} at {} of {}", n, at, len_));
    volatile std::byte sink = data[0];  // readable (ASan checks both ends)
    sink = data[n - 1];
    (void)sink;
    std::lock_guard l(mu_);
    total_ += n;
  }
  void check() const {
    if (total_ != len_) bug("deliver", fmt::format("put {} bytes of {}", total_, len_));
  }

 private:
  const uint64_t len_;
  std::mutex mu_;
  uint64_t total_ = 0;
};

// Advances the stream by n bytes: through next() when by_next, else deliver().
void advance(fsched::ckpt::PageReader& pr, uint64_t n, bool by_next) {
  if (!by_next) {
    CountingSink sink(n);
    pr.deliver(n, sink);
    sink.check();
    return;
  }
  for (uint64_t got = 0; got < n;) {
    auto v =
        pr.next(static_cast<size_t>(std::min<uint64_t>(n - got, fsched::ckpt::kChunkRawBytes)));
    if (v.empty()) bug("empty view before the end of the stream", std::to_string(got));
    got += v.size();
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace fsched::ckpt;
  std::string_view in(reinterpret_cast<const char*>(data), size);
  size_t nul = in.find('\0');
  std::string manifest(in.substr(0, nul));
  std::string_view pages = nul == std::string_view::npos ? std::string_view() : in.substr(nul + 1);
  if (manifest.find("\"fill\"") != std::string::npos) manifest = fill_hashes(manifest, pages);

  const fs::path& dir = image_dir();
  write_file(dir / "manifest.json", manifest);
  write_file(dir / "manifest.xxh3",
             fmt::format("{:016x}\n", XXH3_64bits(manifest.data(), manifest.size())));
  if (nul == std::string_view::npos)
    ::unlink((dir / "pages.img").c_str());
  else
    write_file(dir / "pages.img", pages);

  std::unique_ptr<ImageReader> r;
  try {
    r = ImageReader::open(dir);
  } catch (const fsched::Error& e) {
    check_error(e, "open");
    return 0;
  }
  const uint64_t logical = r->manifest().at("pages_logical_bytes").get<uint64_t>();
  try {
    Manifest m = r->manifest().get<Manifest>();
    validate_manifest(m, logical);
  } catch (const nlohmann::json::exception&) {
    // restore reports it as "DIR: malformed manifest: ..."
  } catch (const fsched::ImageError&) {
    // "image: ..." from validate_manifest()
  }

  bool verified = false;
  try {
    r->verify_chunks();
    verified = true;
  } catch (const fsched::Error& e) {
    check_error(e, "verify_chunks");
  }
  // The page stream, verified or not (the reader checks each chunk itself then),
  // section by section as restore reads it: the sections alternately through next()
  // and deliver(), each entered where the manifest says it starts.
  try {
    auto pr = r->pages();
    bool by_next = (size & 1) == 0;
    for (Section s : kSectionOrder) {
      std::optional<uint64_t> at = recorded_start(r->manifest(), s);
      if (!at || *at < pr->position() || *at > logical) {
        try {
          pr->enter_section(s);
        } catch (const fsched::Error& e) {
          check_error(e, "enter_section (misplaced)");
          continue;
        }
        bug("entered a section the manifest does not place here", std::string(section_name(s)));
      }
      advance(*pr, *at - pr->position(), by_next);
      by_next = !by_next;
      try {
        pr->enter_section(s);
      } catch (const fsched::Error& e) {
        bug("enter_section at the recorded offset", e.what());
      }
    }
    advance(*pr, logical - pr->position(), by_next);
    if (pr->position() != logical) bug("stream position", std::to_string(pr->position()));
    try {
      pr->next(1);
      bug("read past the end of the page stream", std::to_string(logical));
    } catch (const fsched::Error& e) {
      check_error(e, "next past the end");
    }
  } catch (const fsched::Error& e) {
    check_error(e, verified ? "pages (verified)" : "pages");
  }
  return 0;
}
