// JSON Web Tokens for the REST API, as Slurm's auth/jwt makes them: HS256 (RFC 7518
// 3.2) over the claims "sun" (the user's name), "iat" and "exp" (Unix seconds), and
// fsched's "uid" (the account the name was issued for), signed
// with a key kept root-only in StateSaveLocation (jwt_hs256.key). Signing and checking
// are libjwt's (jwt(3)); this unit keeps the key file and the claims' rules.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace fsched::proto::jwt {

// The fewest and most bytes a key file may hold (RFC 7518 3.2: an HS256 key has at
// least 256 bits).
inline constexpr size_t kMinKeyBytes = 32;
inline constexpr size_t kMaxKeyBytes = 4096;
// Token lifespans, seconds: `scontrol token`'s default (Slurm's) and the longest one.
inline constexpr int64_t kDefaultLifespan = 1800;
inline constexpr int64_t kMaxLifespan = int64_t{365} * 86400;

// Reads the key at `file`; when it does not exist, creates it (mode 0600, written under
// a name of its own, then linked into place) with kMinKeyBytes from getrandom(2). Its
// directory must be owned by this process's euid and writable by no one else (else
// another user could swap the key); the file must be a regular file (O_NOFOLLOW) with
// one link, owned by the euid, with no permission for group or others, holding
// kMinKeyBytes..kMaxKeyBytes bytes.
// Throws fsched::Error naming the file and what is wrong, with errno.
std::string load_or_create_key(const std::filesystem::path& file);

// What a valid token says.
struct Claims {
  std::string user;     // "sun": the user's login name
  uint32_t uid = 0;     // "uid": the account's uid when the token was issued
  int64_t issued = 0;   // "iat", Unix seconds
  int64_t expires = 0;  // "exp", Unix seconds
};

// The token (header.payload.signature, base64url) for claims, signed with key.
// Throws fsched::Error if libjwt fails (out of memory).
std::string sign(std::string_view key, const Claims& claims);

// Clock difference between hosts tolerated in "iat", seconds.
inline constexpr int64_t kMaxClockSkew = 300;

// Checks token against key at Unix time `now`: well formed, alg HS256 (none and
// every other algorithm refused), a valid signature, "sun" a non-empty string, "uid",
// "iat" and "exp" integers with iat <= now + kMaxClockSkew, now < exp and exp - iat at
// most kMaxLifespan. Throws proto::RpcError(401) saying which check
// failed ("token expired at 2026-12-07T10:00:00", ...).
Claims verify(std::string_view key, std::string_view token, int64_t now);

}  // namespace fsched::proto::jwt
