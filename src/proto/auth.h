// MUNGE credentials bound to one request (internal to src/proto). The payload is
//
//   fsched-rpc 2 LF METHOD SP TARGET LF to SP DESTINATION LF body-sha256 SP HEX
//
// TARGET is the path with its query string, DESTINATION the server as the client
// addresses it and as the server knows itself ("host:port" from fsched.conf), and HEX
// the SHA-256 of the body. So a credential taken from one request authorizes no other
// request, no other query and no other daemon, munged refuses a replayed one, and the
// credential stays small whatever the body's size (a MUNGE credential travels in an
// HTTP header, whose length the server bounds). See munge(3).
#pragma once

#include <string>
#include <string_view>

#include "proto/rpc.h"

namespace fsched::proto::auth {

// SHA-256 of data, as 64 lowercase hex digits (OpenSSL's EVP interface).
std::string sha256_hex(std::string_view data);

// The part of the payload that names the request and its destination, which the
// server can check before it reads the body.
std::string payload_head(std::string_view method, std::string_view target,
                         std::string_view destination);

// The whole payload a credential for this request must carry.
std::string payload_of(std::string_view method, std::string_view target,
                       std::string_view destination, std::string_view body);

// A credential for payload from munged at socket ("" for libmunge's default), valid
// for ttl seconds (AuthInfo ttl=; 0: munged's default; munged caps it at its
// --max-ttl). The server needs nothing for it: munged refuses an expired credential.
// Throws fsched::Error when munged cannot be reached.
std::string encode_cred(const std::string& socket, const std::string& payload, int ttl = 0);

// What a valid credential vouches for: who sent the request, and the SHA-256 (hex)
// of the body it was made for, to be checked once the body is read.
struct Verified {
  Caller caller;
  std::string body_sha256;
};

// Checks cred and that its payload names exactly this method, target and destination;
// returns the uid/gid munged vouches for and the body's hash. Throws RpcError(401)
// when the credential is missing, invalid, expired, replayed or made for another
// request or another daemon.
Verified decode_cred(const std::string& socket, const std::string& cred, std::string_view method,
                     std::string_view target, std::string_view destination);

}  // namespace fsched::proto::auth
