// The cluster's image key: restore runs as root on whatever an image says, so the
// manifest (which holds the chunk table with every chunk's checksum) carries an
// HMAC-SHA256 made with a root-only key, and restore checks it before it parses
// anything. The key is one file shared by every node of a cluster (like munge.key):
// 32 random bytes, owned by root, mode 0600, found at --key, $FSCHED_IMAGE_KEY or
// kDefaultImageKeyPath. The first dump on a host without one creates it.
// Interfaces: HMAC(3ssl) with EVP_sha256, RAND_bytes(3ssl), CRYPTO_memcmp(3ssl).
#pragma once

#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace fsched::ckpt {

inline constexpr const char* kDefaultImageKeyPath = "/etc/fsched/image.key";

// The key file in effect: `given` if not empty, else $FSCHED_IMAGE_KEY, else the default.
std::string image_key_path(const std::string& given);

// Reads the key at `path`. Refuses (Error naming the path) a key that is missing, a
// symlink or not a regular file, not owned by root, readable or writable by group or
// others, or shorter than 32 bytes or longer than 4096.
std::vector<std::byte> load_image_key(const std::string& path);

// Like load_image_key, but creates a new random key (0600, its directory 0755 if
// missing) when there is none; two dumps racing to create it end with the same key.
std::vector<std::byte> load_or_create_image_key(const std::string& path);

// HMAC-SHA256 of `data` with `key`, as 64 lowercase hex digits.
std::string image_hmac(const std::vector<std::byte>& key, std::string_view data);

// Compares two HMACs in constant time.
bool hmac_equal(std::string_view a, std::string_view b);

}  // namespace fsched::ckpt
