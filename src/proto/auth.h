// MUNGE credentials bound to one request (internal to src/proto): the payload is
// "METHOD PATH\nBODY", so a credential taken from one request does not authorize
// another, and munged refuses a replayed one. See munge(3).
#pragma once

#include <string>
#include <string_view>

#include "proto/rpc.h"

namespace fsched::proto::auth {

// What a credential for this request must carry. The query string is not part of it.
std::string payload_of(std::string_view method, std::string_view path, std::string_view body);

// A credential for payload from munged at socket ("" for libmunge's default).
// Throws fsched::Error when munged cannot be reached.
std::string encode_cred(const std::string& socket, const std::string& payload);

// Checks cred and that it carries exactly expected; returns the uid/gid munged vouches
// for. Throws RpcError(401) when the credential is invalid, expired, replayed or made
// for another request.
Caller decode_cred(const std::string& socket, const std::string& cred, const std::string& expected);

}  // namespace fsched::proto::auth
