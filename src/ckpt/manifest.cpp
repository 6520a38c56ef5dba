#include "ckpt/manifest.h"

#include <openssl/evp.h>

#include "common/error.h"

namespace fsched::ckpt {

std::string to_hex(const void* data, std::size_t len) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string out(len * 2, '0');
  auto* p = static_cast<const std::uint8_t*>(data);
  for (std::size_t i = 0; i < len; ++i) {
    out[2 * i] = kDigits[p[i] >> 4];
    out[2 * i + 1] = kDigits[p[i] & 15];
  }
  return out;
}

std::vector<std::uint8_t> from_hex(const std::string& hex) {
  auto nib = [&](char c) -> int {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    fail_image("manifest: bad hex digit '{}'", c);
  };
  if (hex.size() % 2) fail_image("manifest: odd-length hex string");
  std::vector<std::uint8_t> out(hex.size() / 2);
  for (std::size_t i = 0; i < out.size(); ++i)
    out[i] = static_cast<std::uint8_t>(nib(hex[2 * i]) << 4 | nib(hex[2 * i + 1]));
  return out;
}

void to_json(nlohmann::json& j, const PageRuns& r) {
  std::string bytes;
  auto put = [&](std::uint64_t v) {
    do {
      bytes.push_back(static_cast<char>((v & 0x7f) | (v > 0x7f ? 0x80 : 0)));
      v >>= 7;
    } while (v);
  };
  std::uint64_t end = 0;
  for (auto [first, count] : r) {
    if (first < end || first + count < first) {  // out of order: the older form
      j = nlohmann::json::array();
      for (auto [f, n] : r) j.push_back({f, n});
      return;
    }
    put(first - end);
    put(count);
    end = first + count;
  }
  std::string out(4 * ((bytes.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(bytes.data()),
                          static_cast<int>(bytes.size()));
  out.resize(static_cast<std::size_t>(n));
  j = std::move(out);
}

void from_json(const nlohmann::json& j, PageRuns& r) {
  r.clear();
  if (j.is_array()) {
    for (const auto& e : j) r.push_back(e.get<std::pair<std::uint64_t, std::uint64_t>>());
    return;
  }
  auto bad = [&](const char* what) {
    throw nlohmann::json::type_error::create(
        302, std::string("page runs: ") + what + " (a base64 string of LEB128 numbers)", &j);
  };
  if (!j.is_string()) bad("neither a string nor an array");
  const auto& text = j.get_ref<const std::string&>();
  if (text.size() % 4) bad("base64 length is not a multiple of 4");
  std::string bytes(text.size() / 4 * 3, '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(bytes.data()),
                          reinterpret_cast<const unsigned char*>(text.data()),
                          static_cast<int>(text.size()));
  if (n < 0) bad("not base64");
  // EVP_DecodeBlock counts the padding as decoded zero bytes.
  std::size_t len = static_cast<std::size_t>(n);
  for (std::size_t k = text.size(); k > 0 && text[k - 1] == '=' && len > 0; --k) --len;
  std::size_t at = 0;
  auto get = [&]() -> std::uint64_t {
    std::uint64_t v = 0;
    for (int shift = 0;; shift += 7) {
      if (at == len) bad("truncated number");
      const auto b = static_cast<std::uint8_t>(bytes[at++]);
      if (shift == 63 && b > 1) bad("number longer than 64 bits");
      v |= static_cast<std::uint64_t>(b & 0x7f) << shift;
      if (!(b & 0x80)) return v;
    }
  };
  std::uint64_t end = 0;
  while (at < len) {
    const std::uint64_t gap = get(), count = get();
    if (end + gap < end || end + gap + count < end + gap) bad("run past 2^64");
    r.emplace_back(end + gap, count);
    end = end + gap + count;
  }
}

Manifest parse_manifest(const nlohmann::json& j, const std::string& where) {
  try {
    return j.get<Manifest>();
  } catch (const nlohmann::json::exception& e) {
    fail_image("{}: malformed manifest: {}", where, e.what());
  }
}

}  // namespace fsched::ckpt
