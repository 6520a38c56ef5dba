// The REST API's tokens (src/proto/jwt.cpp): the key file's checks, and what verify()
// refuses, with tokens made by libjwt and by hand (forged, alg none).
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "common/error.h"
#include "proto/jwt.h"
#include "proto/rpc.h"

namespace fsched::proto::jwt {
namespace {

using testing::HasSubstr;

// base64url without padding (RFC 7515 2), via OpenSSL's base64.
std::string b64url(std::string_view in) {
  std::string out(4 * ((in.size() + 2) / 3) + 1, '\0');
  int n = EVP_EncodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(in.data()),
                          static_cast<int>(in.size()));
  out.resize(static_cast<size_t>(n));
  while (!out.empty() && out.back() == '=') out.pop_back();
  for (char& c : out) c = c == '+' ? '-' : c == '/' ? '_' : c;
  return out;
}

// A token with this header and payload, HMAC-SHA256-signed with key ("" : no signature).
std::string hand_made(std::string_view header, std::string_view payload, std::string_view key) {
  std::string input = b64url(header) + "." + b64url(payload);
  if (key.empty()) return input + ".";
  unsigned char mac[EVP_MAX_MD_SIZE];
  unsigned len = 0;
  HMAC(EVP_sha256(), key.data(), static_cast<int>(key.size()),
       reinterpret_cast<const unsigned char*>(input.data()), input.size(), mac, &len);
  return input + "." + b64url(std::string_view(reinterpret_cast<char*>(mac), len));
}

std::string refusal(std::string_view key, std::string_view token, int64_t now) {
  try {
    verify(key, token, now);
  } catch (const RpcError& e) {
    EXPECT_EQ(e.status(), 401);
    return e.what();
  }
  return "";
}

const std::string kKey(32, 'k');

TEST(Jwt, SignedTokenVerifiesUntilItExpires) {
  std::string t = sign(kKey, {"alice", 1001, 1000, 2800});
  auto c = verify(kKey, t, 1500);
  EXPECT_EQ(c.user, "alice");
  EXPECT_EQ(c.uid, 1001u);
  EXPECT_EQ(c.issued, 1000);
  EXPECT_EQ(c.expires, 2800);
  EXPECT_THAT(refusal(kKey, t, 2800), HasSubstr("the token expired at"));
  EXPECT_THAT(refusal(std::string(32, 'x'), t, 1500), HasSubstr("signature is not valid"));
}

TEST(Jwt, ForgedNoneAndOtherAlgorithmsAreRefused) {
  std::string payload = R"({"sun":"root","uid":0,"iat":1000,"exp":2000})";
  // Same claims, right key: accepted (the hand-made signer matches libjwt's).
  EXPECT_EQ(verify(kKey, hand_made(R"({"alg":"HS256","typ":"JWT"})", payload, kKey), 1500).user,
            "root");
  EXPECT_THAT(refusal(kKey, hand_made(R"({"alg":"HS256"})", payload, "another key"), 1500),
              HasSubstr("signature is not valid"));
  // libjwt refuses "none" when given a key; HS512 with the right key passes libjwt and is
  // refused for its algorithm.
  EXPECT_THAT(refusal(kKey, hand_made(R"({"alg":"none"})", payload, ""), 1500),
              HasSubstr("malformed or its signature is not valid"));
  EXPECT_THAT(refusal(kKey, hand_made(R"({"alg":"HS512"})", payload, kKey), 1500),
              HasSubstr("signature is not valid"));
  auto claims = [&](std::string_view p) { return hand_made(R"({"alg":"HS256"})", p, kKey); };
  EXPECT_THAT(refusal(kKey, claims(R"({"uid":0,"iat":1,"exp":2000})"), 1500),
              HasSubstr("names no user"));
  EXPECT_THAT(refusal(kKey, claims(R"({"sun":"a","uid":0,"iat":1000,"exp":"2000"})"), 1500),
              HasSubstr("no expiry"));
  EXPECT_THAT(refusal(kKey, claims(R"({"sun":"a","uid":0,"iat":1000.5,"exp":2000})"), 1500),
              HasSubstr("no issue time"));
  EXPECT_THAT(refusal(kKey, claims(R"({"sun":"a","uid":0,"iat":1})"), 1500),
              HasSubstr("no expiry"));
  EXPECT_THAT(refusal(kKey, claims(R"({"sun":"a","iat":1000,"exp":2000})"), 1500),
              HasSubstr("no valid uid"));
  EXPECT_THAT(refusal(kKey, claims(R"({"sun":"a","uid":"0","iat":1000,"exp":2000})"), 1500),
              HasSubstr("no valid uid"));
  EXPECT_THAT(refusal(kKey, claims(R"({"sun":"a","uid":-1,"iat":1000,"exp":2000})"), 1500),
              HasSubstr("no valid uid"));
  EXPECT_THAT(refusal(kKey, claims(R"({"sun":"a","uid":0,"iat":9000,"exp":9999})"), 1500),
              HasSubstr("issued in the future"));
  EXPECT_THAT(refusal(kKey, claims(R"({"sun":"a","uid":0,"iat":1000,"exp":99999999999})"), 1500),
              HasSubstr("is not within 1 s to"));
  EXPECT_THAT(refusal(kKey, "", 1500), HasSubstr("empty token"));
  EXPECT_THAT(refusal(kKey, "not.a.token", 1500), HasSubstr("malformed"));
  EXPECT_THAT(refusal(kKey, std::string(9000, 'a'), 1500), HasSubstr("longer than"));
}

class JwtKeyFile : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ =
        std::filesystem::temp_directory_path() / ("fsched-jwt-test-" + std::to_string(::getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }
  std::string error_of(const std::filesystem::path& p) {
    try {
      load_or_create_key(p);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  }
  std::filesystem::path dir_;
};

TEST_F(JwtKeyFile, CreatedOnceRootOnlyThenReadBack) {
  auto p = dir_ / "jwt_hs256.key";
  std::string k = load_or_create_key(p);
  EXPECT_EQ(k.size(), kMinKeyBytes);
  struct stat st {};
  ASSERT_EQ(::stat(p.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0600u);
  EXPECT_EQ(load_or_create_key(p), k);
  EXPECT_FALSE(std::filesystem::exists(dir_ / "jwt_hs256.key.tmp"));
}

TEST_F(JwtKeyFile, LooseModeShortFileAndLinkAreRefused) {
  auto p = dir_ / "k";
  std::ofstream(p) << std::string(40, 'a');
  ::chmod(p.c_str(), 0644);
  EXPECT_THAT(error_of(p), HasSubstr("mode 0644 lets others read it"));
  ::chmod(p.c_str(), 0600);
  EXPECT_EQ(load_or_create_key(p), std::string(40, 'a'));
  auto s = dir_ / "short";
  std::ofstream(s) << "abc";
  ::chmod(s.c_str(), 0600);
  EXPECT_THAT(error_of(s), HasSubstr("3 bytes; an HS256 key must hold 32 to 4096 bytes"));
  auto l = dir_ / "link";
  std::filesystem::create_symlink(p, l);
  EXPECT_THAT(error_of(l), HasSubstr("cannot open the JWT key"));
  EXPECT_THAT(error_of(dir_), HasSubstr("not a regular file"));
  auto hard = dir_ / "hard";
  std::filesystem::create_hard_link(p, hard);
  EXPECT_THAT(error_of(p), HasSubstr("has 2 links; it must have one"));
  // A directory others may write to: they could swap the key.
  ::chmod(dir_.c_str(), 0777);
  EXPECT_THAT(error_of(dir_ / "new.key"), HasSubstr("writable by no one else"));
  EXPECT_FALSE(std::filesystem::exists(dir_ / "new.key"));
  ::chmod(dir_.c_str(), 0755);
}

}  // namespace
}  // namespace fsched::proto::jwt
