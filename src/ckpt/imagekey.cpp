// The cluster's image key and the manifest HMAC; see imagekey.h.
#include "ckpt/imagekey.h"

#include <fcntl.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <filesystem>

#include "ckpt/manifest.h"
#include "common/error.h"
#include "common/fd.h"

namespace fsched::ckpt {
namespace {

constexpr std::size_t kKeyBytes = 32, kMaxKeyBytes = 4096;

}  // namespace

std::string image_key_path(const std::string& given) {
  if (!given.empty()) return given;
  if (const char* env = std::getenv("FSCHED_IMAGE_KEY"); env && *env) return env;
  return kDefaultImageKeyPath;
}

std::vector<std::byte> load_image_key(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC));
  if (!fd) {
    if (errno == ELOOP) fail("image key {}: is a symbolic link; refusing it", path);
    fail_errno("image key {}: cannot open (images are checked with the key that dumped them)",
               path);
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) fail_errno("image key {}: fstat", path);
  if (!S_ISREG(st.st_mode)) fail("image key {}: not a regular file", path);
  if (st.st_uid != 0) fail("image key {}: owned by uid {}, not root", path, st.st_uid);
  if (st.st_mode & 077)
    fail("image key {}: mode {:o} lets others read or change it; it must be 0600", path,
         st.st_mode & 07777);
  if (st.st_size < static_cast<off_t>(kKeyBytes) || st.st_size > static_cast<off_t>(kMaxKeyBytes))
    fail("image key {}: {} bytes; a key has {} to {}", path, st.st_size, kKeyBytes, kMaxKeyBytes);
  std::vector<std::byte> key(static_cast<std::size_t>(st.st_size));
  if (::pread(fd.get(), key.data(), key.size(), 0) != static_cast<ssize_t>(key.size()))
    fail_errno("image key {}: short read", path);
  return key;
}

std::vector<std::byte> load_or_create_image_key(const std::string& path) {
  if (::access(path.c_str(), F_OK) == 0 || errno != ENOENT) return load_image_key(path);
  std::filesystem::path p(path);
  std::error_code ec;
  if (!p.parent_path().empty() && !std::filesystem::exists(p.parent_path(), ec)) {
    std::filesystem::create_directories(p.parent_path(), ec);
    if (ec) fail("image key {}: cannot create its directory: {}", path, ec.message());
  }
  std::vector<std::byte> key(kKeyBytes);
  if (RAND_bytes(reinterpret_cast<unsigned char*>(key.data()), static_cast<int>(key.size())) != 1)
    fail("image key {}: no random bytes from OpenSSL", path);
  // Written in full under a name of our own, then linked: a racing dump either links
  // first (and we read its key) or finds ours complete.
  std::string tmp = fmt::format("{}.tmp{}", path, ::getpid());
  {
    UniqueFd fd(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!fd) fail_errno("image key {}: cannot create {}", path, tmp);
    if (::write(fd.get(), key.data(), key.size()) != static_cast<ssize_t>(key.size()) ||
        ::fsync(fd.get()) < 0) {
      int e = errno;
      ::unlink(tmp.c_str());
      throw Error(fmt::format("image key {}: cannot write {}", path, tmp), e);
    }
  }
  int linked = ::link(tmp.c_str(), path.c_str());
  int e = errno;
  ::unlink(tmp.c_str());
  if (linked < 0 && e != EEXIST) throw Error(fmt::format("image key {}: cannot create", path), e);
  return load_image_key(path);
}

std::string image_hmac(const std::vector<std::byte>& key, std::string_view data) {
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
            reinterpret_cast<const unsigned char*>(data.data()), data.size(), mac, &len))
    fail("HMAC-SHA256 failed");
  return to_hex(mac, len);
}

bool hmac_equal(std::string_view a, std::string_view b) {
  return a.size() == b.size() && CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

}  // namespace fsched::ckpt
