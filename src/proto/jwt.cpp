#include "proto/jwt.h"

#include <fcntl.h>
#include <jwt.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdint>
#include <memory>
#include <string>

#include <nlohmann/json.hpp>

#include "common/error.h"
#include "common/fd.h"
#include "proto/rpc.h"
#include "proto/timefmt.h"

namespace fsched::proto::jwt {
namespace {

struct JwtFree {
  void operator()(jwt_t* j) const { ::jwt_free(j); }
};
using JwtPtr = std::unique_ptr<jwt_t, JwtFree>;
struct StrFree {
  void operator()(char* s) const { std::free(s); }
};

[[noreturn]] void refuse(const std::string& why) {
  throw RpcError(401, "authentication failed: " + why);
}

void write_all(int fd, const std::string& data, const std::filesystem::path& file) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t n = ::write(fd, data.data() + off, data.size() - off);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_errno("cannot write the JWT key {}", file.string());
    off += static_cast<size_t>(n);
  }
}

std::string random_bytes(size_t n) {
  std::string out(n, '\0');
  size_t got = 0;
  while (got < out.size()) {
    ssize_t r = ::getrandom(out.data() + got, out.size() - got, 0);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) fail_errno("cannot make a JWT key: getrandom");
    got += static_cast<size_t>(r);
  }
  return out;
}

}  // namespace

std::string load_or_create_key(const std::filesystem::path& file) {
  auto dir = file.parent_path().empty() ? std::filesystem::path(".") : file.parent_path();
  struct stat ds {};
  if (::stat(dir.c_str(), &ds) < 0)
    fail_errno("JWT key {}: cannot stat its directory", file.string());
  // Sticky (as /tmp): others may write there but not rename or remove our files.
  if (ds.st_uid != ::geteuid() || ((ds.st_mode & 022) && !(ds.st_mode & S_ISVTX)))
    fail(
        "JWT key {}: its directory {} must be owned by uid {} and writable by no one else "
        "(owner {}, mode {:04o})",
        file.string(), dir.string(), ::geteuid(), ds.st_uid, ds.st_mode & 07777);
  UniqueFd fd(::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd && errno == ENOENT) {
    std::string key = random_bytes(kMinKeyBytes);
    // Written whole under a name of its own, then linked into place: a crash leaves no
    // short key, and two controllers starting at once do not share a file.
    std::string suffix;
    for (unsigned char b : random_bytes(6)) suffix += fmt::format("{:02x}", b);
    auto tmp = file;
    tmp += ".tmp." + suffix;
    UniqueFd out(::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
    if (!out) fail_errno("cannot create the JWT key {}", tmp.string());
    write_all(out.get(), key, tmp);
    if (::fsync(out.get()) < 0) fail_errno("cannot write the JWT key {}", tmp.string());
    out.reset();
    // link(2) fails if another fschedctld made the key meanwhile: that key is kept.
    if (::link(tmp.c_str(), file.c_str()) < 0 && errno != EEXIST)
      fail_errno("cannot create the JWT key {}", file.string());
    ::unlink(tmp.c_str());
    fd.reset(::open(file.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  }
  if (!fd) fail_errno("cannot open the JWT key {}", file.string());
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) fail_errno("cannot stat the JWT key {}", file.string());
  if (!S_ISREG(st.st_mode)) fail("JWT key {}: not a regular file", file.string());
  if (st.st_nlink != 1)
    fail("JWT key {}: has {} links; it must have one", file.string(), st.st_nlink);
  if (st.st_uid != ::geteuid())
    fail("JWT key {}: owned by uid {}, not by uid {} (fschedctld's)", file.string(), st.st_uid,
         ::geteuid());
  if (st.st_mode & 077)
    fail("JWT key {}: mode {:04o} lets others read it; it must be 0600", file.string(),
         st.st_mode & 07777);
  if (st.st_size < static_cast<off_t>(kMinKeyBytes) ||
      st.st_size > static_cast<off_t>(kMaxKeyBytes))
    fail("JWT key {}: {} bytes; an HS256 key must hold {} to {} bytes", file.string(), st.st_size,
         kMinKeyBytes, kMaxKeyBytes);
  std::string key(static_cast<size_t>(st.st_size), '\0');
  ssize_t got = read_up_to(fd.get(), key.data(), key.size());
  if (got < 0) fail_errno("cannot read the JWT key {}", file.string());
  if (static_cast<size_t>(got) != key.size())
    fail("JWT key {}: shorter than its size", file.string());
  return key;
}

std::string sign(std::string_view key, const Claims& claims) {
  jwt_t* raw = nullptr;
  if (int e = ::jwt_new(&raw); e != 0) throw Error("cannot make a JWT", e);
  JwtPtr j(raw);
  int e = ::jwt_add_grant(j.get(), "sun", claims.user.c_str());
  if (!e) e = ::jwt_add_grant_int(j.get(), "uid", static_cast<long>(claims.uid));
  if (!e) e = ::jwt_add_grant_int(j.get(), "iat", static_cast<long>(claims.issued));
  if (!e) e = ::jwt_add_grant_int(j.get(), "exp", static_cast<long>(claims.expires));
  if (!e)
    e = ::jwt_set_alg(j.get(), JWT_ALG_HS256, reinterpret_cast<const unsigned char*>(key.data()),
                      static_cast<int>(key.size()));
  if (e) throw Error("cannot make a JWT", e);
  std::unique_ptr<char, StrFree> out(::jwt_encode_str(j.get()));
  if (!out) throw Error("cannot encode a JWT", errno);
  return out.get();
}

Claims verify(std::string_view key, std::string_view token, int64_t now) {
  if (token.empty()) refuse("empty token");
  if (token.size() > 8192) refuse("token longer than 8192 bytes");
  // libjwt refuses a token whose header names "none" when given a key, and checks the
  // signature with the algorithm the header names: only HS256 is accepted below, so a
  // token signed with another algorithm (or the key used as an RSA public key) is not.
  std::string text(token);
  jwt_t* raw = nullptr;
  if (::jwt_decode(&raw, text.c_str(), reinterpret_cast<const unsigned char*>(key.data()),
                   static_cast<int>(key.size())) != 0)
    refuse("the token is malformed or its signature is not valid");
  JwtPtr j(raw);
  if (::jwt_get_alg(j.get()) != JWT_ALG_HS256)
    refuse(fmt::format("token signed with {}, not HS256", ::jwt_alg_str(::jwt_get_alg(j.get()))));
  // The claims as JSON, their types checked here: libjwt's jwt_get_grant_int reads a
  // string or a fraction as 0 without an error.
  std::unique_ptr<char, StrFree> grants(::jwt_get_grants_json(j.get(), nullptr));
  auto claims = nlohmann::json::parse(grants ? grants.get() : "", nullptr, false);
  if (!claims.is_object()) refuse("the token's claims are not a JSON object");
  auto integer = [&](const char* name, const char* what) {
    auto it = claims.find(name);
    if (it == claims.end() || !it->is_number_integer())
      refuse(fmt::format("the token has no {} (claim \"{}\", an integer)", what, name));
    return it->get<int64_t>();
  };
  Claims c;
  auto sun = claims.find("sun");
  if (sun == claims.end() || !sun->is_string() || sun->get<std::string>().empty())
    refuse("the token names no user (claim \"sun\")");
  c.user = sun->get<std::string>();
  c.expires = integer("exp", "expiry");
  c.issued = integer("iat", "issue time");
  int64_t uid = integer("uid", "valid uid");
  if (uid < 0 || uid > int64_t{UINT32_MAX}) refuse("the token has no valid uid (claim \"uid\")");
  c.uid = static_cast<uint32_t>(uid);
  if (c.issued > now + kMaxClockSkew)
    refuse(fmt::format("the token was issued in the future ({})",
                       format_timestamp(static_cast<double>(c.issued))));
  if (c.expires <= c.issued || c.expires - c.issued > kMaxLifespan)
    refuse(fmt::format("the token's lifespan ({} s) is not within 1 s to {} s",
                       c.expires - c.issued, kMaxLifespan));
  if (now >= c.expires)
    refuse(fmt::format("the token expired at {}; get a new one with `scontrol token`",
                       format_timestamp(static_cast<double>(c.expires))));
  return c;
}

}  // namespace fsched::proto::jwt
