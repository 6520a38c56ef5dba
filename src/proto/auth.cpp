#include "proto/auth.h"

#include <munge.h>

#include <cstdlib>

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

}  // namespace

std::string payload_of(std::string_view method, std::string_view path, std::string_view body) {
  path = path.substr(0, path.find('?'));
  std::string p;
  p.reserve(method.size() + path.size() + body.size() + 2);
  p.append(method).append(" ").append(path).append("\n").append(body);
  return p;
}

std::string encode_cred(const std::string& socket, const std::string& payload) {
  MungeCtx m(socket);
  char* cred = nullptr;
  munge_err_t e = munge_encode(&cred, m.ctx, payload.data(), static_cast<int>(payload.size()));
  if (e != EMUNGE_SUCCESS)
    fail("munge: cannot create a credential ({}); is munged running?", munge_ctx_strerror(m.ctx));
  std::string out(cred);
  std::free(cred);
  return out;
}

Caller decode_cred(const std::string& socket, const std::string& cred, const std::string& expected) {
  MungeCtx m(socket);
  void* buf = nullptr;
  int len = 0;
  uid_t uid = 0;
  gid_t gid = 0;
  munge_err_t e = munge_decode(cred.c_str(), m.ctx, &buf, &len, &uid, &gid);
  std::string got(static_cast<const char*>(buf), buf ? static_cast<size_t>(len) : 0);
  std::free(buf);
  if (e != EMUNGE_SUCCESS) throw RpcError(401, fmt::format("authentication failed: {}", munge_ctx_strerror(m.ctx)));
  if (got != expected) throw RpcError(401, "authentication failed: the credential was made for another request");
  return Caller{uid, gid};
}

}  // namespace fsched::proto::auth
