// The RPC server side, on cpp-httplib. Only the daemons link it: loading
// libcpp-httplib (and the OpenSSL it brings) costs the short-lived commands
// milliseconds per run.
//
// What an unauthenticated client can cost a daemon is bounded (issue 10, item 11):
// - the request line and headers ("head") are at most kMaxHeadBytes and must arrive
//   within kHeadDeadline of the connection's accept, or the connection is dropped
//   (LimitedStream below: Debian's libcpp-httplib 0.11 is a compiled library, so its
//   CPPHTTPLIB_* limits cannot be changed, and it bounds neither the number of header
//   lines nor a line's length while reading it);
// - the credential is checked by the pre-routing handler, before any byte of the
//   body is read; a body over kMaxBodyBytes is refused on its Content-Length, and a
//   chunked or length-less body is refused outright;
// - kWorkers threads serve connections, each connection one request, and the listen
//   backlog is kBacklog, so a few dozen slow clients neither take all workers nor fill
//   the accept queue.
#include "proto/rpc.h"

#include <fcntl.h>
#include <httplib.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <strings.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <chrono>
#include <climits>
#include <cstring>
#include <limits>
#include <map>
#include <memory>
#include <optional>

#include "proto/auth.h"

namespace fsched::proto {
namespace {

using Clock = std::chrono::steady_clock;

// Limits of what a client may send before it has proved who it is.
constexpr size_t kMaxHeadBytes = 64 << 10;                // request line and headers
constexpr auto kHeadDeadline = std::chrono::seconds(10);  // from accept to the end of the head
// Seconds one read (after the head) or one write may wait for the peer.
constexpr time_t kReadTimeoutS = 10;
constexpr time_t kWriteTimeoutS = 30;
// Checkpoints and restores hold a worker for as long as they take (minutes), and a
// slow client holds one up to kHeadDeadline: enough workers that neither stalls the
// cluster's other requests.
constexpr size_t kWorkers = 64;
constexpr int kBacklog = 1024;  // the kernel caps it at net.core.somaxconn
// After a reply, at most this long and this much of an unread body is drained, so
// that closing the socket does not reset the connection before the client has read
// the reply (a refusal sent before the body was read).
constexpr auto kLingerTime = std::chrono::seconds(1);
constexpr size_t kLingerBytes = kMaxBodyBytes;

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
    if (pattern[i] == "{}")
      captured.push_back(path[i]);
    else if (pattern[i] != path[i])
      return false;
  }
  return true;
}

void reply_error(httplib::Response& res, int status, const std::string& msg) {
  res.status = status;
  res.set_content(nlohmann::json{{"error", msg}}.dump(), "application/json");
}

// An RpcError's reply: its status, message and failure class (error_body()).
void reply_error(httplib::Response& res, const RpcError& e) {
  res.status = e.status();
  res.set_content(error_body(e).dump(), "application/json");
}

// Milliseconds until t, at least 0, at most cap_s seconds.
int ms_until(Clock::time_point t, time_t cap_s) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(t - Clock::now()).count();
  return static_cast<int>(std::clamp<long long>(left, 0, static_cast<long long>(cap_s) * 1000));
}

bool wait_fd(int fd, short events, int timeout_ms) {
  pollfd p{fd, events, 0};
  int r;
  do r = ::poll(&p, 1, timeout_ms);
  while (r < 0 && errno == EINTR);
  return r > 0;
}

// A socket stream for httplib's request parser that enforces the head's size and
// deadline; after the head (head_done()), reads and writes wait at most their timeout.
// Buffered, as httplib reads the head one byte per call.
class LimitedStream final : public httplib::Stream {
 public:
  // ssl: the connection's TLS session once its handshake is done, or null for plain TCP.
  LimitedStream(int fd, Clock::time_point accepted, SSL* ssl = nullptr)
      : fd_(fd), ssl_(ssl), head_deadline_(accepted + kHeadDeadline) {}

  void head_done() { in_head_ = false; }
  bool head_exceeded() const { return head_exceeded_; }

  bool is_readable() const override {
    return buf_off_ < buf_len_ || (ssl_ && ::SSL_pending(ssl_) > 0) ||
           wait_fd(fd_, POLLIN,
                   in_head_ ? ms_until(head_deadline_, kReadTimeoutS) : int{kReadTimeoutS * 1000});
  }
  bool is_writable() const override { return wait_fd(fd_, POLLOUT, int{kWriteTimeoutS * 1000}); }

  ssize_t read(char* ptr, size_t size) override {
    if (buf_off_ == buf_len_) {
      size_t want = buf_.size();
      if (in_head_) {
        if (head_read_ >= kMaxHeadBytes) {
          head_exceeded_ = true;
          return -1;
        }
        want = std::min(want, kMaxHeadBytes - head_read_);
      }
      // Past its deadline a head is still read while its bytes are there already:
      // a request that waited in the queue behind slow ones is served, a slow one is not.
      if (!is_readable()) return -1;
      ssize_t n;
      if (ssl_) {
        n = ssl_io(false, buf_.data(), want);
        if (n <= 0) return -1;
      } else {
        do n = ::recv(fd_, buf_.data(), want, 0);
        while (n < 0 && errno == EINTR);
        if (n <= 0) return n;
      }
      if (in_head_) head_read_ += static_cast<size_t>(n);
      buf_off_ = 0;
      buf_len_ = static_cast<size_t>(n);
    }
    size_t n = std::min(size, buf_len_ - buf_off_);
    std::memcpy(ptr, buf_.data() + buf_off_, n);
    buf_off_ += n;
    return static_cast<ssize_t>(n);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    if (ssl_) return ssl_io(true, const_cast<char*>(ptr), size);
    ssize_t n;
    do n = ::send(fd_, ptr, size, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    address(&::getpeername, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    address(&::getsockname, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  void address(int (*get)(int, sockaddr*, socklen_t*), std::string& ip, int& port) const {
    sockaddr_storage a{};
    socklen_t len = sizeof a;
    if (get(fd_, reinterpret_cast<sockaddr*>(&a), &len) < 0) return;
    char host[NI_MAXHOST];
    char serv[NI_MAXSERV];
    if (::getnameinfo(reinterpret_cast<sockaddr*>(&a), len, host, sizeof host, serv, sizeof serv,
                      NI_NUMERICHOST | NI_NUMERICSERV) == 0) {
      ip = host;
      port = std::atoi(serv);
    }
  }

  // One SSL_read or SSL_write on the non-blocking socket, waiting for the socket as
  // TLS asks, as long as the head's deadline (while in the head) or the read or write
  // timeout allows: a peer that sends a record one byte at a time gains nothing.
  ssize_t ssl_io(bool write, char* p, size_t size) {
    int len = static_cast<int>(std::min<size_t>(size, INT_MAX));
    for (;;) {
      int n = write ? ::SSL_write(ssl_, p, len) : ::SSL_read(ssl_, p, len);
      if (n > 0) return n;
      int err = ::SSL_get_error(ssl_, n);
      short ev = err == SSL_ERROR_WANT_READ ? POLLIN : err == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
      int timeout = write      ? int{kWriteTimeoutS * 1000}
                    : in_head_ ? ms_until(head_deadline_, kReadTimeoutS)
                               : int{kReadTimeoutS * 1000};
      if (!ev || !wait_fd(fd_, ev, timeout)) return -1;
    }
  }

  int fd_;
  SSL* ssl_;
  Clock::time_point head_deadline_;
  bool in_head_ = true;
  bool head_exceeded_ = false;
  size_t head_read_ = 0;
  std::array<char, 16 << 10> buf_{};
  size_t buf_off_ = 0, buf_len_ = 0;
};

// What one worker thread is serving: set for the time of one connection. httplib calls
// the pre-routing handler and then the route's handler on the thread that reads the
// request, and gives them no other way to share what the first learned.
struct Current {
  LimitedStream* stream = nullptr;
  Clock::time_point accepted;
  std::optional<auth::Verified> verified;
  std::vector<std::string> params;
  const void* route = nullptr;
};
thread_local Current t_current;

// The thread pool, noting when each connection was accepted (its head's deadline
// counts from then, also while it waits for a worker).
class Pool final : public httplib::TaskQueue {
 public:
  explicit Pool(size_t n) : pool_(n) {}
  void enqueue(std::function<void()> fn) override {
    pool_.enqueue([fn = std::move(fn), accepted = Clock::now()] {
      t_current.accepted = accepted;
      fn();
    });
  }
  void shutdown() override { pool_.shutdown(); }

 private:
  httplib::ThreadPool pool_;
};

// httplib's server with its per-connection loop replaced: one request per connection
// (our client opens one per call) read through a LimitedStream, then a lingering close.
class HttpServer final : public httplib::Server {
 public:
  // Serves TLS on every connection (Server::use_tls) from now on.
  void set_tls(SSL_CTX* ctx) { tls_ = ctx; }

 private:
  bool process_and_close_socket(socket_t sock) override {
    bool ok = false;
    SslPtr ssl;
    if (tls_) {
      ssl = handshake(sock);
      if (!ssl) {
        t_current = Current{};
        ::close(sock);
        return false;
      }
    }
    {
      LimitedStream strm(sock, t_current.accepted, ssl.get());
      t_current.stream = &strm;
      bool closed = false;
      ok = process_request(strm, /*close_connection=*/true, closed, nullptr);
      t_current = Current{};
    }
    if (ssl) ::SSL_shutdown(ssl.get());
    linger_close(sock);
    return ok;
  }

  struct SslFree {
    void operator()(SSL* s) const { ::SSL_free(s); }
  };
  using SslPtr = std::unique_ptr<SSL, SslFree>;

  // The TLS handshake on the socket made non-blocking (for good: LimitedStream waits
  // itself), within what is left of the head's deadline, however slowly the peer
  // sends; null if it failed or took too long.
  SslPtr handshake(int sock) {
    int flags = ::fcntl(sock, F_GETFL);
    if (flags < 0 || ::fcntl(sock, F_SETFL, flags | O_NONBLOCK) < 0) return nullptr;
    SslPtr ssl(::SSL_new(tls_));
    if (!ssl || ::SSL_set_fd(ssl.get(), sock) != 1) return nullptr;
    auto deadline = t_current.accepted + kHeadDeadline;
    for (;;) {
      int r = ::SSL_accept(ssl.get());
      if (r == 1) return ssl;
      int err = ::SSL_get_error(ssl.get(), r);
      short ev = err == SSL_ERROR_WANT_READ ? POLLIN : err == SSL_ERROR_WANT_WRITE ? POLLOUT : 0;
      int left = ms_until(deadline, kReadTimeoutS);
      if (!ev || left <= 0 || !wait_fd(sock, ev, left)) {
        ::ERR_clear_error();
        return nullptr;
      }
    }
  }

  SSL_CTX* tls_ = nullptr;

  // Half-closes, then drains what the client still sends (bounded), then closes:
  // closing with unread data would reset the connection, and the client could lose
  // the reply.
  static void linger_close(int sock) {
    ::shutdown(sock, SHUT_WR);
    auto end = Clock::now() + kLingerTime;
    size_t drained = 0;
    char buf[16 << 10];
    while (drained < kLingerBytes && wait_fd(sock, POLLIN, ms_until(end, 1))) {
      ssize_t n = ::recv(sock, buf, sizeof buf, 0);
      if (n <= 0) break;
      drained += static_cast<size_t>(n);
    }
    ::close(sock);
  }
};

}  // namespace

int64_t int_field(const nlohmann::json& b, std::string_view key, int64_t dflt, int64_t lo,
                  int64_t hi) {
  if (!b.is_object()) return dflt;
  auto it = b.find(key);
  if (it == b.end() || it->is_null()) return dflt;
  auto range = [&](const std::string& got) {
    return RpcError(
        400, fmt::format("field '{}' must be an integer from {} to {}, not {}", key, lo, hi, got));
  };
  if (it->is_number_unsigned()) {
    auto u = it->get<uint64_t>();
    if (u > static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) ||
        static_cast<int64_t>(u) > hi || static_cast<int64_t>(u) < lo)
      throw range(std::to_string(u));
    return static_cast<int64_t>(u);
  }
  if (it->is_number_integer()) {
    auto v = it->get<int64_t>();
    if (v < lo || v > hi) throw range(std::to_string(v));
    return v;
  }
  throw range(it->dump().substr(0, 40));
}

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
  std::string identity;  // "addr:port" as bound: what credentials must be made for
  TokenVerifier tokens;  // set: bearer tokens instead of MUNGE credentials
  struct File {
    std::string content, type, location;  // location: a redirect's target
  };
  std::map<std::string, File, std::less<>> files;  // by URL path
  struct CtxFree {
    void operator()(SSL_CTX* c) const { ::SSL_CTX_free(c); }
  };
  std::unique_ptr<SSL_CTX, CtxFree> tls;  // use_tls()
  HttpServer http;
  std::vector<Route> routes;
  int listen_fd = -1;

  // Before the body is read: the route, the credential, then the body's announced size.
  httplib::Server::HandlerResponse pre_route(const httplib::Request& req, httplib::Response& res) {
    if (t_current.stream) t_current.stream->head_done();
    try {
      if (auto f = files.find(req.path); f != files.end()) {
        if (req.method != "GET" && req.method != "HEAD")
          throw RpcError(405, fmt::format("no route {} {}", req.method, req.path));
        serve_file(req, f->second, res);
        return httplib::Server::HandlerResponse::Handled;
      }
      const Route* found = nullptr;
      bool path_known = false;
      // One spelling per resource: no empty segment ("//", a trailing "/").
      if (req.path.empty() || req.path.back() == '/' || req.path.find("//") != std::string::npos)
        throw RpcError(404, fmt::format("no route {} {}", req.method, req.path));
      auto path = split_path(req.path);
      for (auto& r : routes) {
        std::vector<std::string> caps;
        if (!match(r.segments, path, caps)) continue;
        path_known = true;
        if (r.method == req.method) {
          found = &r;
          t_current.params = std::move(caps);
          break;
        }
      }
      if (!found)
        throw RpcError(path_known ? 405 : 404, fmt::format("no route {} {}", req.method, req.path));
      // Who is asking comes first: a client without a valid credential learns nothing more.
      if (tokens)
        t_current.verified = auth::Verified{tokens(token_of(req)), {}};
      else
        t_current.verified = auth::decode_cred(munge_socket, req.get_header_value(kAuthHeader),
                                               req.method, req.target, identity);
      if (req.has_header("Transfer-Encoding"))
        throw RpcError(411,
                       "a request body must come with a Content-Length (no Transfer-Encoding)");
      uint64_t length = req.get_header_value<uint64_t>("Content-Length");
      if (req.method == "POST" && !req.has_header("Content-Length"))
        throw RpcError(411, fmt::format("{} {}: Content-Length required", req.method, req.path));
      if (length > kMaxBodyBytes)
        throw RpcError(413, fmt::format("request body of {} bytes is over the limit of {} bytes",
                                        length, kMaxBodyBytes));
      t_current.route = found;
      drop_headers(req);
      return httplib::Server::HandlerResponse::Unhandled;
    } catch (const RpcError& e) {
      reply_error(res, e);
    } catch (const std::exception& e) {
      reply_error(res, 500, e.what());
    }
    return httplib::Server::HandlerResponse::Handled;
  }

  // Removes what would make httplib rework a reply (the request is httplib's own, not
  // const): Accept-Encoding, since Debian's httplib compresses with Brotli at its slowest
  // level whenever a browser accepts it (17 s for a list of 10,000 jobs, against 0.16 s
  // sent as it is); Range, since it applies any number of ranges to any reply (2,700
  // ranges of a 145 KB file would build 390 MB), and no client of ours needs one.
  static void drop_headers(const httplib::Request& req) {
    auto& r = const_cast<httplib::Request&>(req);
    r.headers.erase("Accept-Encoding");
    r.headers.erase("Range");
    r.ranges.clear();  // parsed from Range before any handler runs
  }

  static std::string token_of(const httplib::Request& req) {
    std::string t = req.get_header_value(kTokenHeader);
    if (t.empty()) {
      // RFC 7235: the scheme's name is case-insensitive.
      std::string a = req.get_header_value("Authorization");
      if (a.size() > 7 && strncasecmp(a.c_str(), "Bearer ", 7) == 0) t = a.substr(7);
    }
    if (t.empty())
      throw RpcError(401, fmt::format("authentication required: send a token from `scontrol "
                                      "token` in the {} header",
                                      kTokenHeader));
    return t;
  }

  static void serve_file(const httplib::Request& req, const File& f, httplib::Response& res) {
    drop_headers(req);
    if (!f.location.empty()) {
      res.set_redirect(f.location);
      return;
    }
    res.status = 200;
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_header("Content-Security-Policy",
                   "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
                   "img-src 'self' data:; object-src 'none'; base-uri 'none'; "
                   "frame-ancestors 'none'");
    res.set_content(f.content, f.type);
  }

  // The route's handler, once pre_route accepted the request. reader: the body's
  // reader (POST, DELETE); GET requests have no body.
  void dispatch(const httplib::Request& req, httplib::Response& res,
                const httplib::ContentReader* reader) {
    try {
      auto* found = static_cast<const Route*>(t_current.route);
      if (!found || !t_current.verified)
        throw RpcError(500, "request dispatched without a checked credential");
      std::string body;
      if (reader) {
        bool over = false;
        bool complete = (*reader)([&](const char* data, size_t n) {
          if (body.size() + n > kMaxBodyBytes) {
            over = true;
            return false;
          }
          body.append(data, n);
          return true;
        });
        if (over)
          throw RpcError(413,
                         fmt::format("request body is over the limit of {} bytes", kMaxBodyBytes));
        if (!complete) throw RpcError(400, "request body incomplete");
      }
      if (!tokens && auth::sha256_hex(body) != t_current.verified->body_sha256)
        throw RpcError(401,
                       "authentication failed: the credential was made for another request body");
      Request r;
      r.caller = t_current.verified->caller;
      r.params = std::move(t_current.params);
      for (auto& [k, v] : req.params) r.query_params.emplace_back(k, v);
      if (!body.empty()) {
        r.body = nlohmann::json::parse(body, nullptr, false);
        if (r.body.is_discarded()) throw RpcError(400, "request body is not JSON");
        if (!r.body.is_object()) throw RpcError(400, "request body must be a JSON object");
      }
      body = std::string();  // the parsed tree replaces it while the handler runs
      res.status = 200;
      if (found->raw) {
        res.set_content(found->raw(r), "application/json");
      } else {
        nlohmann::json out = found->h(r);
        res.set_content(out.is_null() ? std::string("{}") : out.dump(), "application/json");
      }
    } catch (const RpcError& e) {
      reply_error(res, e);
    } catch (const nlohmann::json::exception& e) {
      reply_error(res, 400, fmt::format("bad request: {}", e.what()));
    } catch (const std::exception& e) {
      reply_error(res, 500, e.what());
    }
  }
};

Server::Server(std::string munge_socket) : impl_(std::make_unique<Impl>()) {
  impl_->munge_socket = std::move(munge_socket);
  auto& http = impl_->http;
  http.set_pre_routing_handler(
      [this](const httplib::Request& q, httplib::Response& s) { return impl_->pre_route(q, s); });
  http.Get(".*", [this](const httplib::Request& q, httplib::Response& s) {
    impl_->dispatch(q, s, nullptr);
  });
  auto with_body = [this](const httplib::Request& q, httplib::Response& s,
                          const httplib::ContentReader& rd) { impl_->dispatch(q, s, &rd); };
  http.Post(".*", with_body);
  http.Delete(".*", with_body);
  // Replies httplib makes itself (a request it cannot parse, such as a header line
  // over its 8 KiB) say what went wrong in the JSON every other error has.
  http.set_error_handler([](const httplib::Request&, httplib::Response& res) {
    if (!res.body.empty()) return;
    reply_error(res, res.status,
                res.status == 400 ? "malformed request: bad request line, or a header line over "
                                    "8 KiB (a token is far shorter)"
                                  : fmt::format("HTTP error {}", res.status));
  });
  http.new_task_queue = [] { return new Pool(kWorkers); };
  http.set_tcp_nodelay(true);
  http.set_read_timeout(kReadTimeoutS);
  http.set_write_timeout(kWriteTimeoutS);
  http.set_keep_alive_max_count(1);
  // A second guard on the body's size, should a request reach httplib's own reader.
  http.set_payload_max_length(kMaxBodyBytes);
  // SO_REUSEADDR only, so that a restarted daemon binds over connections in
  // TIME_WAIT. Not httplib's default SO_REUSEPORT: with it a second daemon binds the same
  // port and both answer, each with its own state. The listening socket is kept to
  // raise its backlog once bound: the library's is 5, fixed when Debian compiled it.
  http.set_socket_options([this](socket_t s) {
    int yes = 1;
    ::setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    impl_->listen_fd = s;
  });
}
Server::~Server() = default;

void Server::route(std::string_view method, std::string_view pattern, Handler h) {
  impl_->routes.push_back({std::string(method), split_path(pattern), std::move(h), {}});
}

void Server::use_tls(const std::string& cert_file, const std::string& key_file) {
  auto openssl_error = [] {
    char buf[256] = "unknown error";
    if (unsigned long e = ::ERR_get_error()) ::ERR_error_string_n(e, buf, sizeof buf);
    ::ERR_clear_error();
    return std::string(buf);
  };
  std::unique_ptr<SSL_CTX, Impl::CtxFree> ctx(::SSL_CTX_new(::TLS_server_method()));
  if (!ctx) fail("TLS: cannot make a context: {}", openssl_error());
  ::SSL_CTX_set_min_proto_version(ctx.get(), TLS1_2_VERSION);
  ::SSL_CTX_set_options(ctx.get(), SSL_OP_NO_RENEGOTIATION);
  if (::SSL_CTX_use_certificate_chain_file(ctx.get(), cert_file.c_str()) != 1)
    fail("TLS: cannot load the certificate {}: {}", cert_file, openssl_error());
  if (::SSL_CTX_use_PrivateKey_file(ctx.get(), key_file.c_str(), SSL_FILETYPE_PEM) != 1)
    fail("TLS: cannot load the private key {} for the certificate {}: {}", key_file, cert_file,
         openssl_error());
  if (::SSL_CTX_check_private_key(ctx.get()) != 1)
    fail("TLS: the private key {} does not match the certificate {}: {}", key_file, cert_file,
         openssl_error());
  impl_->tls = std::move(ctx);
  impl_->http.set_tls(impl_->tls.get());
}

void Server::use_tokens(TokenVerifier verify) { impl_->tokens = std::move(verify); }

void Server::file(std::string url, std::string content, std::string type) {
  impl_->files[std::move(url)] = {std::move(content), std::move(type), {}};
}

void Server::redirect(std::string from, std::string to) {
  impl_->files[std::move(from)] = {{}, {}, std::move(to)};
}

void Server::route_raw(std::string_view method, std::string_view pattern, RawHandler h) {
  impl_->routes.push_back({std::string(method), split_path(pattern), {}, std::move(h)});
}

uint16_t Server::bind(const std::string& addr, uint16_t port) {
  if (port == 0) {
    int any = impl_->http.bind_to_any_port(addr);
    if (any <= 0) fail_errno("cannot listen on {}:<any port>", addr);
    port = static_cast<uint16_t>(any);
  } else if (!impl_->http.bind_to_port(addr, port)) {
    fail_errno("cannot listen on {}:{}", addr, port);
  }
  // listen(2) again on a listening socket only changes its backlog.
  if (impl_->listen_fd < 0 || ::listen(impl_->listen_fd, kBacklog) < 0)
    fail_errno("cannot set the listen backlog of {}:{}", addr, port);
  impl_->identity = fmt::format("{}:{}", addr, port);
  return port;
}

void Server::serve() { impl_->http.listen_after_bind(); }
void Server::stop() { impl_->http.stop(); }

}  // namespace fsched::proto
