// The RPC over real loopback TCP with real MUNGE credentials (munged must be running:
// scripts/test.sh starts it): the Beast client against the httplib server.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <string>
#include <thread>

#include <gtest/gtest.h>
#include <munge.h>

#include "common/fd.h"
#include "proto/auth.h"
#include "proto/rpc.h"

namespace fsched::proto {
namespace {

class RpcTest : public ::testing::Test {
 protected:
  void SetUp() override {
    server_.route("POST", "/v1/echo/{}", [](const Request& r) {
      return nlohmann::json{{"param", r.params.at(0)},
                            {"body", r.body},
                            {"uid", r.caller.uid},
                            {"gid", r.caller.gid},
                            {"q", r.query("q")}};
    });
    server_.route("GET", "/v1/busy",
                  [](const Request&) -> nlohmann::json { throw RpcError(409, "job 7 is busy"); });
    server_.route("GET", "/v1/slow", [](const Request&) {
      std::this_thread::sleep_for(std::chrono::seconds(3));
      return nlohmann::json::object();
    });
    server_.route_raw("GET", "/v1/big", [](const Request&) {
      // 20 MB: more than Beast's default 8 MB response limit.
      return nlohmann::json{{"blob", std::string(20u << 20, 'x')}}.dump();
    });
    port_ = server_.bind("127.0.0.1", 0);
    thread_ = std::thread([this] { server_.serve(); });
  }
  void TearDown() override {
    server_.stop();
    thread_.join();
  }
  Client client(int timeout_s = 10) { return Client("127.0.0.1", port_, {}, timeout_s); }

  Server server_;
  uint16_t port_ = 0;
  std::thread thread_;
};

TEST_F(RpcTest, RequestReachesHandlerWithMungeIdentity) {
  auto c = client();
  auto reply = c.call("POST", "/v1/echo/42?q=yes", nlohmann::json{{"n", 1}});
  EXPECT_EQ(reply["param"], "42");
  EXPECT_EQ(reply["body"], (nlohmann::json{{"n", 1}}));
  EXPECT_EQ(reply["uid"], getuid());
  EXPECT_EQ(reply["gid"], getgid());
  EXPECT_EQ(reply["q"], "yes");
  // A second call on the same Client works (a new connection each time).
  EXPECT_EQ(c.call("POST", "/v1/echo/43")["param"], "43");
}

TEST_F(RpcTest, HandlerErrorKeepsStatusAndMessage) {
  auto c = client();
  try {
    c.call("GET", "/v1/busy");
    FAIL() << "no error";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.status(), 409);
    EXPECT_STREQ(e.what(), "job 7 is busy");
  }
  try {
    c.call("GET", "/v1/nothing/here");
    FAIL() << "no error";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.status(), 404);
    EXPECT_STREQ(e.what(), "no route GET /v1/nothing/here");
  }
}

TEST_F(RpcTest, LargeReplyArrivesWhole) {
  auto reply = client().call("GET", "/v1/big");
  EXPECT_EQ(reply["blob"].get_ref<const std::string&>().size(), 20u << 20);
}

TEST_F(RpcTest, NoReplyWithinTimeoutSaysSo) {
  auto c = client(1);
  try {
    c.call("GET", "/v1/slow");
    FAIL() << "no error";
  } catch (const RpcError&) {
    FAIL() << "expected a transport error";
  } catch (const Error& e) {
    EXPECT_EQ(std::string(e.what()), "cannot reach 127.0.0.1:" + std::to_string(port_) +
                                         ": no reply to GET /v1/slow within 1 s");
  }
}

TEST(RpcClient, NothingListeningSaysDaemonNotRunning) {
  // A port that was free a moment ago: bind, read it back, close.
  UniqueFd s(socket(AF_INET, SOCK_STREAM, 0));
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ASSERT_EQ(bind(s.get(), reinterpret_cast<sockaddr*>(&a), sizeof a), 0);
  socklen_t len = sizeof a;
  ASSERT_EQ(getsockname(s.get(), reinterpret_cast<sockaddr*>(&a), &len), 0);
  uint16_t port = ntohs(a.sin_port);
  s.reset();
  Client c("127.0.0.1", port);
  try {
    c.call("GET", "/v1/jobs");
    FAIL() << "no error";
  } catch (const Error& e) {
    std::string what = e.what();
    EXPECT_EQ(what.rfind("cannot reach 127.0.0.1:" + std::to_string(port) + ": ", 0), 0u) << what;
    EXPECT_NE(what.find("is the daemon running?"), std::string::npos) << what;
  }
}

// AuthInfo ttl=: the client's credentials carry the configured lifetime, the server
// accepts them, and munged refuses one that has outlived it.
TEST_F(RpcTest, ClientWithShortTtlIsAccepted) {
  EXPECT_EQ(Client("127.0.0.1", port_, {}, 10, 1).call("POST", "/v1/echo/7")["param"], "7");
}

TEST(MungeTtl, CredentialCarriesTheRequestedTtl) {
  for (int ttl : {0, 77}) {
    std::string cred = auth::encode_cred("", "payload", ttl);
    munge_ctx_t ctx = munge_ctx_create();
    ASSERT_NE(ctx, nullptr);
    void* buf = nullptr;
    int len = 0;
    ASSERT_EQ(munge_decode(cred.c_str(), ctx, &buf, &len, nullptr, nullptr), EMUNGE_SUCCESS)
        << munge_ctx_strerror(ctx);
    std::free(buf);
    int got = -1;
    ASSERT_EQ(munge_ctx_get(ctx, MUNGE_OPT_TTL, &got), EMUNGE_SUCCESS);
    munge_ctx_destroy(ctx);
    if (ttl)
      EXPECT_EQ(got, ttl);
    else
      EXPECT_GT(got, 0);  // munged's default (300 unless configured otherwise)
  }
}

TEST(MungeTtl, ExpiredCredentialIsRefused) {
  std::string payload = auth::payload_of("GET", "/v1/x", "h:1", "");
  std::string cred = auth::encode_cred("", payload, 1);
  std::this_thread::sleep_for(std::chrono::milliseconds(3000));
  try {
    auth::decode_cred("", cred, "GET", "/v1/x", "h:1");
    FAIL() << "an expired credential was accepted";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.status(), 401);
    EXPECT_NE(std::string(e.what()).find("xpired"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace fsched::proto
