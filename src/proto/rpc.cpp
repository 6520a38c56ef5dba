#include "proto/rpc.h"

#include <munge.h>

#include <cstdlib>
#include <mutex>

#include <httplib.h>

namespace fsched::proto {
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

std::vector<std::string> split_path(std::string_view path) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < path.size()) {
    size_t j = path.find('/', i);
    if (j == std::string_view::npos) j = path.size();
    if (j > i) out.emplace_back(path.substr(i, j - i));
    i = j + 1;
  }
  return out;
}

bool match(const std::vector<std::string>& pattern, const std::vector<std::string>& path,
           std::vector<std::string>& captured) {
  if (pattern.size() != path.size()) return false;
  for (size_t i = 0; i < path.size(); ++i) {
    if (pattern[i] == "{}") captured.push_back(path[i]);
    else if (pattern[i] != path[i]) return false;
  }
  return true;
}

void reply_error(httplib::Response& res, int status, const std::string& msg) {
  res.status = status;
  res.set_content(nlohmann::json{{"error", msg}}.dump(), "application/json");
}

}  // namespace

// ---------------------------------------------------------------- client

struct Client::Impl {
  std::string host;
  uint16_t port;
  std::string munge_socket;
  httplib::Client http;
  Impl(std::string h, uint16_t p, std::string s) : host(std::move(h)), port(p), munge_socket(std::move(s)), http(host, port) {}
};

Client::Client(std::string host, uint16_t port, std::string munge_socket, int timeout_s)
    : impl_(std::make_unique<Impl>(std::move(host), port, std::move(munge_socket))) {
  impl_->http.set_connection_timeout(5);
  set_timeout(timeout_s);
  impl_->http.set_keep_alive(true);
  // Small request, small reply: without TCP_NODELAY the second request on a kept-alive
  // connection waits for the peer's delayed ACK (40 ms).
  impl_->http.set_tcp_nodelay(true);
}
Client::~Client() = default;
Client::Client(Client&&) noexcept = default;

void Client::set_timeout(int seconds) {
  impl_->http.set_read_timeout(seconds);
  impl_->http.set_write_timeout(seconds);
}

std::string Client::where() const { return fmt::format("{}:{}", impl_->host, impl_->port); }

nlohmann::json Client::call(std::string_view method, std::string_view path, const nlohmann::json& body) {
  std::string b = body.is_null() ? std::string() : body.dump();
  std::string p(path);
  httplib::Headers headers{{kAuthHeader, encode_cred(impl_->munge_socket, payload_of(method, path, b))}};
  httplib::Result res{nullptr, httplib::Error::Unknown};
  if (method == "GET") res = impl_->http.Get(p, headers);
  else if (method == "DELETE") res = impl_->http.Delete(p, headers);
  else if (method == "POST") res = impl_->http.Post(p, headers, b, "application/json");
  else fail("rpc: unsupported method {}", method);
  if (!res) {
    auto e = res.error();
    std::string why = e == httplib::Error::Connection ? "connection refused or timed out; is the daemon running?"
                      : e == httplib::Error::Read    ? "no reply (the daemon closed the connection or timed out)"
                                                     : httplib::to_string(e);
    fail("cannot reach {}: {}", where(), why);
  }
  nlohmann::json reply = nlohmann::json::parse(res->body, nullptr, false);
  if (res->status >= 400) {
    std::string msg = reply.is_object() && reply.contains("error") ? reply["error"].get<std::string>()
                                                                   : fmt::format("HTTP {} from {}", res->status, where());
    throw RpcError(res->status, msg);
  }
  if (reply.is_discarded()) fail("{}: reply to {} {} is not JSON", where(), method, path);
  return reply;
}

// ---------------------------------------------------------------- server

std::string Request::query(std::string_view key) const {
  for (auto& [k, v] : query_params)
    if (k == key) return v;
  return {};
}

struct Server::Impl {
  struct Route {
    std::string method;
    std::vector<std::string> segments;  // "{}" matches any one segment
    Handler h;
    RawHandler raw;
  };
  std::string munge_socket;
  httplib::Server http;
  std::vector<Route> routes;

  void dispatch(const httplib::Request& req, httplib::Response& res) {
    try {
      const Route* found = nullptr;
      std::vector<std::string> captured;
      bool path_known = false;
      auto path = split_path(req.path);
      for (auto& r : routes) {
        std::vector<std::string> caps;
        if (!match(r.segments, path, caps)) continue;
        path_known = true;
        if (r.method == req.method) {
          found = &r;
          captured = std::move(caps);
          break;
        }
      }
      if (!found) {
        reply_error(res, path_known ? 405 : 404, fmt::format("no route {} {}", req.method, req.path));
        return;
      }
      Request r;
      r.caller = decode_cred(munge_socket, req.get_header_value(kAuthHeader),
                             payload_of(req.method, req.path, req.body));
      r.params = std::move(captured);
      for (auto& [k, v] : req.params) r.query_params.emplace_back(k, v);
      if (!req.body.empty()) {
        r.body = nlohmann::json::parse(req.body, nullptr, false);
        if (r.body.is_discarded()) throw RpcError(400, "request body is not JSON");
      }
      res.status = 200;
      if (found->raw) {
        res.set_content(found->raw(r), "application/json");
      } else {
        nlohmann::json out = found->h(r);
        res.set_content(out.is_null() ? std::string("{}") : out.dump(), "application/json");
      }
    } catch (const RpcError& e) {
      reply_error(res, e.status(), e.what());
    } catch (const nlohmann::json::exception& e) {
      reply_error(res, 400, fmt::format("bad request: {}", e.what()));
    } catch (const std::exception& e) {
      reply_error(res, 500, e.what());
    }
  }
};

Server::Server(std::string munge_socket) : impl_(std::make_unique<Impl>()) {
  impl_->munge_socket = std::move(munge_socket);
  auto d = [this](const httplib::Request& q, httplib::Response& s) { impl_->dispatch(q, s); };
  impl_->http.Get(".*", d);
  impl_->http.Post(".*", d);
  impl_->http.Delete(".*", d);
  // Checkpoints and restores hold a worker for as long as they take.
  impl_->http.new_task_queue = [] { return new httplib::ThreadPool(32); };
  impl_->http.set_tcp_nodelay(true);
  impl_->http.set_read_timeout(30);
  impl_->http.set_write_timeout(30);
}
Server::~Server() = default;

void Server::route(std::string_view method, std::string_view pattern, Handler h) {
  impl_->routes.push_back({std::string(method), split_path(pattern), std::move(h), {}});
}

void Server::route_raw(std::string_view method, std::string_view pattern, RawHandler h) {
  impl_->routes.push_back({std::string(method), split_path(pattern), {}, std::move(h)});
}

void Server::bind(const std::string& addr, uint16_t port) {
  if (!impl_->http.bind_to_port(addr, port)) fail_errno("cannot listen on {}:{}", addr, port);
}

void Server::serve() { impl_->http.listen_after_bind(); }
void Server::stop() { impl_->http.stop(); }

}  // namespace fsched::proto
