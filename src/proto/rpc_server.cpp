// The RPC server side, on cpp-httplib. Only the daemons link it: loading
// libcpp-httplib (and the OpenSSL it brings) costs the short-lived commands
// milliseconds per run.
#include "proto/rpc.h"

#include <httplib.h>

#include "proto/auth.h"

namespace fsched::proto {
namespace {

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
      r.caller = auth::decode_cred(munge_socket, req.get_header_value(kAuthHeader),
                             auth::payload_of(req.method, req.path, req.body));
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

uint16_t Server::bind(const std::string& addr, uint16_t port) {
  if (port == 0) {
    int any = impl_->http.bind_to_any_port(addr);
    if (any <= 0) fail_errno("cannot listen on {}:<any port>", addr);
    return static_cast<uint16_t>(any);
  }
  if (!impl_->http.bind_to_port(addr, port)) fail_errno("cannot listen on {}:{}", addr, port);
  return port;
}

void Server::serve() { impl_->http.listen_after_bind(); }
void Server::stop() { impl_->http.stop(); }

}  // namespace fsched::proto
