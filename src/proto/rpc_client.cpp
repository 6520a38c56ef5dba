// The RPC client side, on Boost.Beast (header-only). The commands link only this
// half: sbatch is started once per submission, and a client without TLS libraries
// starts in about a third of the time (bench/sched_bench.py, "submit").
#include "proto/rpc.h"

#include <chrono>
#include <cstdint>
#include <limits>

#include <boost/asio/connect.hpp>
#include <boost/asio/io_context.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/beast/core/error.hpp>
#include <boost/beast/core/flat_buffer.hpp>
#include <boost/beast/core/tcp_stream.hpp>
#include <boost/beast/http.hpp>

#include "common/failure.h"
#include "proto/auth.h"

namespace fsched::proto {
namespace {

namespace asio = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = asio::ip::tcp;

// Seconds to wait for a TCP connection before saying the daemon is not there.
constexpr int kConnectTimeoutS = 5;

// Runs one asynchronous operation to completion, so that tcp_stream's deadline
// (which only applies to asynchronous operations) bounds it.
template <typename Start>
beast::error_code run_one(asio::io_context& ioc, Start start) {
  beast::error_code result = asio::error::operation_aborted;
  start([&result](beast::error_code ec, auto&&...) { result = ec; });
  ioc.restart();
  ioc.run();
  return result;
}

}  // namespace

// Both halves link this file (fsched_proto); the server builds its bodies with
// error_body(), so the two ends of the "failure" field are written in one place.
nlohmann::json error_body(const RpcError& e) {
  nlohmann::json b{{"error", e.what()}};
  if (auto f = e.failure()) b["failure"] = std::string(to_string(*f));
  return b;
}

RpcError error_from_reply(int status, const nlohmann::json& reply, std::string_view where) {
  bool obj = reply.is_object();
  std::string msg = obj && reply.contains("error") && reply["error"].is_string()
                        ? reply["error"].get<std::string>()
                        : fmt::format("HTTP {} from {}", status, where);
  if (obj && reply.contains("failure") && reply["failure"].is_string())
    if (auto f = failure_class_from_string(reply["failure"].get<std::string>()))
      return RpcError(status, msg, *f);
  return RpcError(status, msg);
}

struct Client::Impl {
  std::string host;
  uint16_t port;
  std::string munge_socket;
  int timeout_s;
  int munge_ttl;
};

Client::Client(std::string host, uint16_t port, std::string munge_socket, int timeout_s,
               int munge_ttl)
    : impl_(std::make_unique<Impl>(
          Impl{std::move(host), port, std::move(munge_socket), timeout_s, munge_ttl})) {}
Client::~Client() = default;
Client::Client(Client&&) noexcept = default;

void Client::set_timeout(int seconds) { impl_->timeout_s = seconds; }

std::string Client::where() const { return fmt::format("{}:{}", impl_->host, impl_->port); }

nlohmann::json Client::call(std::string_view method, std::string_view path,
                            const nlohmann::json& body) {
  http::verb verb = http::string_to_verb(beast::string_view(method.data(), method.size()));
  if (verb != http::verb::get && verb != http::verb::post && verb != http::verb::delete_)
    fail("rpc: unsupported method {}", method);
  std::string b = body.is_null() ? std::string() : body.dump();
  // The server would refuse it unread; say so here, where the caller sees why.
  if (b.size() > kMaxBodyBytes)
    fail("{} {}: the request is {} bytes, over the limit of {} bytes", method, path, b.size(),
         kMaxBodyBytes);

  // One connection per call: a daemon's worker thread is not held by an idle
  // kept-alive connection, and a retried request never reuses a credential, which
  // munged would refuse as a replay.
  asio::io_context ioc;
  tcp::resolver resolver(ioc);
  beast::error_code ec;
  auto endpoints = resolver.resolve(impl_->host, std::to_string(impl_->port), ec);
  if (ec) fail("cannot reach {}: cannot resolve {}: {}", where(), impl_->host, ec.message());
  beast::tcp_stream stream(ioc);
  stream.expires_after(std::chrono::seconds(kConnectTimeoutS));
  ec = run_one(ioc, [&](auto done) { stream.async_connect(endpoints, done); });
  if (ec) fail("cannot reach {}: {}; is the daemon running?", where(), ec.message());
  // Small request, small reply: Nagle would hold the request's last segment.
  stream.socket().set_option(tcp::no_delay(true), ec);

  http::request<http::string_body> req{verb, beast::string_view(path.data(), path.size()), 11};
  req.set(http::field::host, impl_->host);
  // The credential names this daemon as we address it, the path with its query, and
  // the body's SHA-256: it stays small however large the body is.
  req.set(kAuthHeader,
          auth::encode_cred(impl_->munge_socket, auth::payload_of(method, path, where(), b),
                            impl_->munge_ttl));
  req.keep_alive(false);
  if (verb == http::verb::post) {
    req.set(http::field::content_type, "application/json");
    req.body() = std::move(b);
  }
  req.prepare_payload();
  // Beast leaves Content-Length out of an empty DELETE; the server wants it on every
  // request that may carry a body, to bound the body before reading it.
  if (verb != http::verb::get) req.content_length(req.body().size());

  stream.expires_after(std::chrono::seconds(impl_->timeout_s));
  ec = run_one(ioc, [&](auto done) { http::async_write(stream, req, done); });
  if (ec) fail("cannot reach {}: sending {} {}: {}", where(), method, path, ec.message());

  beast::flat_buffer buffer;
  http::response_parser<http::string_body> parser;
  // A list of 10,000 jobs is more than Beast's 8 MB default. Not boost::none: Boost
  // 1.74 compares the Content-Length against the empty optional and always refuses.
  parser.body_limit(std::numeric_limits<std::uint64_t>::max());
  ec = run_one(ioc, [&](auto done) { http::async_read(stream, buffer, parser, done); });
  if (ec == beast::error::timeout)
    fail("cannot reach {}: no reply to {} {} within {} s", where(), method, path, impl_->timeout_s);
  if (ec) fail("cannot reach {}: no reply to {} {} ({})", where(), method, path, ec.message());
  beast::error_code ignored;
  stream.socket().shutdown(tcp::socket::shutdown_both, ignored);

  const auto& res = parser.get();
  int status = static_cast<int>(res.result_int());
  nlohmann::json reply = nlohmann::json::parse(res.body(), nullptr, false);
  if (status >= 400) throw error_from_reply(status, reply, where());
  if (reply.is_discarded()) fail("{}: reply to {} {} is not JSON", where(), method, path);
  return reply;
}

}  // namespace fsched::proto
