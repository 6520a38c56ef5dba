// How the daemons and commands talk: JSON over HTTP/1.1 on TCP, each
// request carrying a MUNGE credential whose payload binds it to the request, as
// Slurm authenticates its RPCs. The routes are listed in docs/scheduler.md.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace fsched::proto {

// The HTTP header that carries the MUNGE credential.
inline constexpr const char* kAuthHeader = "X-Fsched-Munge";
// The header that carries a JWT on a server that takes tokens (Server::use_tokens), as
// slurmrestd names it.
inline constexpr const char* kTokenHeader = "X-SLURM-USER-TOKEN";

// The largest batch script accepted, as Slurm's default (4 MiB).
inline constexpr size_t kMaxScriptBytes = size_t{4} << 20;
// The largest request body a daemon reads: a submission holds the script (JSON
// escaping makes it longer) and the user's whole environment. Larger ones are
// refused (413) before a byte of them is read.
inline constexpr size_t kMaxBodyBytes = size_t{16} << 20;

// An error the other side reported: HTTP status, its one-line message and, when the
// failure was classified (fschedd's engine operations, docs/failures.md), its class,
// sent as the "failure" field of the error body next to "error".
class RpcError : public Error {
 public:
  RpcError(int status, const std::string& what) : Error(what), status_(status) {}
  RpcError(int status, const std::string& what, FailureClass failure)
      : Error(what, 0, failure), status_(status), classified_(true) {}
  int status() const noexcept { return status_; }
  // The class the server named; none when it named none (or one this build does not
  // know), which a reader takes as transient.
  std::optional<FailureClass> failure() const noexcept {
    return classified_ ? std::optional(failure_class()) : std::nullopt;
  }

 private:
  int status_;
  bool classified_ = false;
};

// The JSON body of an error reply: {"error": what} and "failure" when e names a class.
nlohmann::json error_body(const RpcError& e);
// The RpcError an error reply of HTTP status with JSON body reply means (reply may be
// discarded or not an object: the message then names the status and where).
RpcError error_from_reply(int status, const nlohmann::json& reply, std::string_view where);

// An integer field of a request body, checked: absent or null gives dflt; a
// non-integer, or an integer outside [lo, hi], throws RpcError(400) naming the field,
// its value and the range (nlohmann's get<int> would silently truncate 2^32 + 2 to 2).
int64_t int_field(const nlohmann::json& body, std::string_view key, int64_t dflt, int64_t lo,
                  int64_t hi);

// Who sent a request, as MUNGE vouches for it.
struct Caller {
  uid_t uid = 0;
  gid_t gid = 0;
  bool is_root() const { return uid == 0; }
};

// The client half (Boost.Beast, in fsched_proto): one TCP connection per call.
class Client {
 public:
  // host: name or address; port: TCP port; munge_socket: munged's socket ("" for
  // libmunge's default); timeout_s: seconds to wait for a reply; munge_ttl: lifetime
  // of the credentials it makes, seconds (Config::munge_ttl, AuthInfo ttl=; 0:
  // munged's default).
  Client(std::string host, uint16_t port, std::string munge_socket = {}, int timeout_s = 60,
         int munge_ttl = 0);
  ~Client();
  Client(Client&&) noexcept;

  // Sends METHOD path with a JSON body (GET and DELETE send none) and returns the
  // reply's JSON. Throws RpcError with the server's message on a 4xx/5xx reply, and
  // fsched::Error "cannot reach HOST:PORT: ..." when no connection or no reply came.
  nlohmann::json call(std::string_view method, std::string_view path,
                      const nlohmann::json& body = nullptr);

  void set_timeout(int seconds);
  std::string where() const;  // "host:port", also the destination its credentials name

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A request as a handler sees it.
struct Request {
  Caller caller;
  std::vector<std::string> params;  // the path segments matched by the route's {}, in order
  nlohmann::json body;              // null when the request had none
  std::string query(std::string_view key) const;  // URL query parameter, "" if absent
  std::vector<std::pair<std::string, std::string>> query_params;
};

// The server half (cpp-httplib, in fsched_proto_server, linked by the daemons only).
class Server {
 public:
  using Handler = std::function<nlohmann::json(const Request&)>;

  explicit Server(std::string munge_socket = {});
  ~Server();

  // Switches the server from MUNGE credentials to bearer tokens (the REST API): a
  // request carries its token in the header kTokenHeader (Slurm's) or as
  // "Authorization: Bearer TOKEN"; `verify` returns who it names or throws RpcError
  // (401). The body is not bound to the token: such a server is for people's tools,
  // which authenticate the connection, not each request.
  using TokenVerifier = std::function<Caller(std::string_view token)>;
  void use_tokens(TokenVerifier verify);

  // Serves HTTPS: every connection starts with a TLS handshake (TLS 1.2 or later),
  // bounded by the deadline of the request's head. cert_file: PEM certificate chain,
  // key_file: its PEM private key (OpenSSL's SSL_CTX_use_certificate_chain_file(3)).
  // Throws fsched::Error naming the file when a file cannot be loaded or the two do
  // not match. Call before serve().
  void use_tls(const std::string& cert_file, const std::string& key_file);

  // GET `url` replies `content` with Content-Type `type`, without any credential (the
  // web console's files; nothing in them is secret). Headers sent with them forbid
  // inline scripts and framing (Content-Security-Policy) as a second guard against
  // script injection.
  void file(std::string url, std::string content, std::string type);
  // GET `from` redirects (302) to `to`, without any credential.
  void redirect(std::string from, std::string to);

  // pattern: the path, where a segment "{}" matches any one segment, e.g.
  // "/v1/jobs/{}/checkpoints". A handler returns the reply's JSON or throws RpcError (its
  // status is sent) or fsched::Error (sent as 500); both reach the client as one line.
  void route(std::string_view method, std::string_view pattern, Handler h);

  // Like route, for replies too large to build as one JSON tree (a list of 10,000
  // jobs): the handler returns the serialized JSON text.
  using RawHandler = std::function<std::string(const Request&)>;
  void route_raw(std::string_view method, std::string_view pattern, RawHandler h);

  // Binds addr:port, port 0 meaning any free one, and returns the TCP port bound
  // (throws fsched::Error naming them when it cannot). serve() then serves on a pool
  // of threads until stop(). "addr:port" is also the destination a credential must
  // name to be accepted here: clients must reach the daemon under the name that
  // fsched.conf gives it (ControlAddr, NodeAddr), as the daemon binds it.
  uint16_t bind(const std::string& addr, uint16_t port);
  void serve();
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace fsched::proto
