// libFuzzer harness: the checkpoint image reader (ImageReader::open: manifest.json,
// manifest.xxh3, the chunk table; verify_chunks(); the page stream; the manifest's
// mapping to ckpt::Manifest as restore and show do it).
//
// Input: manifest.json's bytes, then optionally a NUL byte and pages.img's bytes (no
// NUL: the image has no pages.img). The harness writes them into an image directory
// with a correct manifest.xxh3, so that the fuzzer gets past the checksum. So that it
// also gets past the chunk checksums, a chunk whose "xxh3" is the string "fill" gets
// the XXH3-64 of its stored bytes in pages.img (the manifest is then re-serialized).
// A bad image must end in fsched::Error naming the image's path (json::exception for
// the Manifest mapping, which restore turns into "malformed manifest"); anything else
// is a bug.
#include <fcntl.h>
#include <unistd.h>
#include <xxhash.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <string_view>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "ckpt/image.h"
#include "ckpt/manifest.h"
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
    std::atexit([] { std::error_code ec; fs::remove_all(top, ec); });
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
  if (std::string_view(e.what()).find(image_dir().native()) == std::string_view::npos)
    bug(step, fmt::format("error does not name the image: {}", e.what()));
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
  write_file(dir / "manifest.xxh3", fmt::format("{:016x}\n", XXH3_64bits(manifest.data(), manifest.size())));
  if (nul == std::string_view::npos) ::unlink((dir / "pages.img").c_str());
  else write_file(dir / "pages.img", pages);

  std::unique_ptr<ImageReader> r;
  try {
    r = ImageReader::open(dir);
  } catch (const fsched::Error& e) {
    check_error(e, "open");
    return 0;
  }
  try {
    Manifest m = r->manifest().get<Manifest>();
    (void)m;
  } catch (const nlohmann::json::exception&) {
    // restore reports it as "DIR: malformed manifest: ..."
  }

  const uint64_t logical = r->manifest().at("pages_logical_bytes").get<uint64_t>();
  bool verified = false;
  try {
    r->verify_chunks();
    verified = true;
  } catch (const fsched::Error& e) {
    check_error(e, "verify_chunks");
  }
  // The page stream, verified or not (the reader checks each chunk itself then).
  try {
    auto pr = r->pages();
    uint64_t got = 0;
    while (got < logical) {
      auto v = pr->next(kChunkRawBytes);
      if (v.empty()) bug("empty view before the end of the stream", std::to_string(got));
      got += v.size();
    }
    if (got != logical) bug("stream longer than pages_logical_bytes", std::to_string(got));
    try {
      pr->next(1);
      bug("read past the end of the page stream", std::to_string(got));
    } catch (const fsched::Error& e) {
      check_error(e, "next past the end");
    }
  } catch (const fsched::Error& e) {
    check_error(e, verified ? "pages (verified)" : "pages");
  }
  return 0;
}
