#include "proto/auth.h"

#include <munge.h>
#include <openssl/evp.h>

#include <cstdlib>
#include <memory>

namespace fsched::proto::auth {
namespace {

// One munge context per call: libmunge contexts are not thread-safe, and creating
// one costs nothing next to the round trip to munged.
struct MungeCtx {
  munge_ctx_t ctx;
  explicit MungeCtx(const std::string& socket) : ctx(munge_ctx_create()) {
    if (!ctx) fail("munge: cannot create a context");
    if (!socket.empty() && munge_ctx_set(ctx, MUNGE_OPT_SOCKET, socket.c_str()) != EMUNGE_SUCCESS)
      fail("munge: bad socket {}: {}", socket, munge_ctx_strerror(ctx));
  }
  ~MungeCtx() { munge_ctx_destroy(ctx); }
  MungeCtx(const MungeCtx&) = delete;
  MungeCtx& operator=(const MungeCtx&) = delete;
};

constexpr std::string_view kHashField = "body-sha256 ";

}  // namespace

std::string sha256_hex(std::string_view data) {
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), md, &len) != 1)
    fail("OpenSSL: SHA-256 failed");
  std::string hex;
  hex.reserve(2 * len);
  for (unsigned int i = 0; i < len; ++i) hex += fmt::format("{:02x}", md[i]);
  return hex;
}

std::string payload_head(std::string_view method, std::string_view target,
                         std::string_view destination) {
  return fmt::format("fsched-rpc 2\n{} {}\nto {}\n", method, target, destination);
}

std::string payload_of(std::string_view method, std::string_view target,
                       std::string_view destination, std::string_view body) {
  return payload_head(method, target, destination).append(kHashField).append(sha256_hex(body));
}

std::string encode_cred(const std::string& socket, const std::string& payload, int ttl) {
  MungeCtx m(socket);
  if (ttl > 0 && munge_ctx_set(m.ctx, MUNGE_OPT_TTL, ttl) != EMUNGE_SUCCESS)
    fail("munge: cannot set the credential TTL to {} s: {}", ttl, munge_ctx_strerror(m.ctx));
  char* cred = nullptr;
  munge_err_t e = munge_encode(&cred, m.ctx, payload.data(), static_cast<int>(payload.size()));
  if (e != EMUNGE_SUCCESS)
    fail("munge: cannot create a credential ({}); is munged running?", munge_ctx_strerror(m.ctx));
  std::string out(cred);
  std::free(cred);
  return out;
}

Verified decode_cred(const std::string& socket, const std::string& cred, std::string_view method,
                     std::string_view target, std::string_view destination) {
  if (cred.empty())
    throw RpcError(401, fmt::format("authentication failed: no {} header", kAuthHeader));
  MungeCtx m(socket);
  void* buf = nullptr;
  int len = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  munge_err_t e = munge_decode(cred.c_str(), m.ctx, &buf, &len, &uid, &gid);
  std::string got(static_cast<const char*>(buf), buf ? static_cast<size_t>(len) : 0);
  std::free(buf);
  if (e != EMUNGE_SUCCESS)
    throw RpcError(401, fmt::format("authentication failed: {}", munge_ctx_strerror(m.ctx)));
  std::string head = payload_head(method, target, destination);
  if (got.size() != head.size() + kHashField.size() + 64 ||
      got.compare(0, head.size(), head) != 0 ||
      got.compare(head.size(), kHashField.size(), kHashField) != 0) {
    // Say which part differs when the credential is ours: a client that reached this
    // daemon under another name than the one it knows itself by sees why.
    std::string_view want_to = destination;
    if (auto p = got.find("\nto "); p != std::string::npos) {
      auto end = got.find('\n', p + 4);
      std::string_view was_to = std::string_view(got).substr(p + 4, end - p - 4);
      if (was_to != want_to)
        throw RpcError(401,
                       fmt::format("authentication failed: the credential was made for {}, not {}",
                                   was_to, want_to));
    }
    throw RpcError(401, "authentication failed: the credential was made for another request");
  }
  return Verified{Caller{uid, gid}, got.substr(head.size() + kHashField.size())};
}

}  // namespace fsched::proto::auth
