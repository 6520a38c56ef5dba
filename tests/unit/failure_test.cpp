// Failure classes across the hops (docs/failures.md): fsched-ckpt's exit codes, the
// engine's typed throw sites, fschedd's statuses and op reports, and the "failure"
// field of an RPC error body as the controller reads it.
#include <unistd.h>

#include <optional>
#include <thread>

#include <gtest/gtest.h>

#include "ckpt/engine.h"
#include "ckpt/manifest.h"
#include "common/error.h"
#include "common/failure.h"
#include "noded/oplog.h"
#include "proto/rpc.h"

namespace {

using fsched::FailureClass;
constexpr FailureClass kAll[] = {FailureClass::kTransient, FailureClass::kImage,
                                 FailureClass::kUnsupported, FailureClass::kUsage};

TEST(FailureClass, ExitCodesAreTheDocumentedOnes) {
  EXPECT_EQ(fsched::exit_code_of(FailureClass::kTransient), 1);
  EXPECT_EQ(fsched::exit_code_of(FailureClass::kUsage), 2);
  EXPECT_EQ(fsched::exit_code_of(FailureClass::kImage), 3);
  EXPECT_EQ(fsched::exit_code_of(FailureClass::kUnsupported), 4);
  for (auto c : kAll)
    EXPECT_EQ(fsched::failure_class_of_exit(fsched::exit_code_of(c)), c) << to_string(c);
}

TEST(FailureClass, UnknownExitCodesAndSignalsAreTransient) {
  // A crash (SIGSEGV, SIGKILL by the OOM killer) or a code of a newer engine must not
  // condemn an image.
  for (int code : {1, 5, 99, 128 + 9, 128 + 11, 255})
    EXPECT_EQ(fsched::failure_class_of_exit(code), FailureClass::kTransient) << code;
}

TEST(FailureClass, NamesRoundTripAndUnknownIsNone) {
  for (auto c : kAll) EXPECT_EQ(fsched::failure_class_from_string(fsched::to_string(c)), c);
  EXPECT_EQ(fsched::to_string(FailureClass::kImage), "image");
  EXPECT_EQ(fsched::failure_class_from_string("cosmic-ray"), std::nullopt);
  EXPECT_EQ(fsched::failure_class_from_string(""), std::nullopt);
}

TEST(FailureClass, FailHelpersThrowTheirClass) {
  auto class_of = [](auto fn) -> std::optional<FailureClass> {
    try {
      fn();
    } catch (const fsched::Error& e) {
      return e.failure_class();
    }
    return std::nullopt;
  };
  EXPECT_EQ(class_of([] { fsched::fail("x {}", 1); }), FailureClass::kTransient);
  EXPECT_EQ(class_of([] { fsched::fail_image("x {}", 1); }), FailureClass::kImage);
  EXPECT_EQ(class_of([] { fsched::fail_unsupported("x {}", 1); }), FailureClass::kUnsupported);
  EXPECT_EQ(class_of([] { fsched::fail_usage("x {}", 1); }), FailureClass::kUsage);
  EXPECT_THROW(fsched::fail_image("x"), fsched::ImageError);
  EXPECT_THROW(fsched::fail_unsupported("x"), fsched::UnsupportedError);
  EXPECT_THROW(fsched::fail_usage("x"), fsched::UsageError);
}

// Engine throw sites reachable without a job: a manifest's bad hex is the image's
// fault; a dump asked of a PID that is no job is the caller's.
TEST(FailureClass, EngineThrowSitesAreTyped) {
  EXPECT_THROW(fsched::ckpt::from_hex("zz"), fsched::ImageError);
  EXPECT_THROW(fsched::ckpt::from_hex("abc"), fsched::ImageError);
  fsched::ckpt::DumpOptions o;
  o.dir = "/nonexistent/failure_test/img";
  o.pid = -1;
  EXPECT_THROW(fsched::ckpt::dump(o), fsched::UsageError);
  o.pid = ::getpid();  // alive, but not the init of a job's PID namespace
  EXPECT_THROW(fsched::ckpt::dump(o), fsched::UsageError);
}

TEST(FailureClass, FscheddStatusesAreDistinct) {
  using fsched::noded::http_status_of;
  EXPECT_EQ(http_status_of(FailureClass::kImage), 422);
  EXPECT_EQ(http_status_of(FailureClass::kUnsupported), 501);
  EXPECT_EQ(http_status_of(FailureClass::kTransient), 503);
  EXPECT_EQ(http_status_of(FailureClass::kUsage), 500);
}

TEST(FailureClass, RunnerResultGivesTheClass) {
  using fsched::noded::failure_of;
  using fsched::noded::RunnerResult;
  EXPECT_EQ(failure_of(std::nullopt), FailureClass::kTransient);  // the runner left nothing
  EXPECT_EQ(failure_of(RunnerResult{.exit_code = 3}), FailureClass::kImage);
  EXPECT_EQ(failure_of(RunnerResult{.exit_code = 4}), FailureClass::kUnsupported);
  EXPECT_EQ(failure_of(RunnerResult{.exit_code = 2}), FailureClass::kUsage);
  EXPECT_EQ(failure_of(RunnerResult{.exit_code = 1}), FailureClass::kTransient);
  EXPECT_EQ(failure_of(RunnerResult{.exit_code = 128 + 9}), FailureClass::kTransient);
  // Killed by the timeout: whatever code the kill left, it says nothing of the image.
  EXPECT_EQ(failure_of(RunnerResult{.exit_code = 3, .timed_out = true}), FailureClass::kTransient);
}

TEST(FailureClass, OpReportCarriesTheFailureOnlyWhenSet) {
  using namespace fsched::noded;
  OpRecord r{.job_id = 7, .kind = OpKind::Restore, .outcome = OpOutcome::Failed, .error = "bad"};
  EXPECT_FALSE(r.report().contains("failure"));
  r.failure = "image";
  EXPECT_EQ(r.report().at("failure"), "image");
  // The durable record keeps it across an fschedd restart.
  EXPECT_EQ(nlohmann::json(r).get<OpRecord>().failure, "image");
}

TEST(FailureClass, ErrorBodyRoundTrips) {
  using fsched::proto::RpcError;
  for (auto c : kAll) {
    RpcError e(fsched::noded::http_status_of(c), "restore of job 3 failed", c);
    auto body = fsched::proto::error_body(e);
    EXPECT_EQ(body.at("failure"), std::string(fsched::to_string(c)));
    RpcError back = fsched::proto::error_from_reply(e.status(), body, "node1:1");
    EXPECT_EQ(back.status(), e.status());
    EXPECT_STREQ(back.what(), "restore of job 3 failed");
    EXPECT_EQ(back.failure(), c);
  }
  // Unclassified: no field, and no class read back.
  RpcError plain(409, "busy");
  EXPECT_FALSE(fsched::proto::error_body(plain).contains("failure"));
  EXPECT_EQ(fsched::proto::error_from_reply(409, fsched::proto::error_body(plain), "x").failure(),
            std::nullopt);
  // A class this build does not know, or a body that is no JSON object.
  auto odd = fsched::proto::error_from_reply(503, {{"error", "e"}, {"failure", "cosmic"}}, "x");
  EXPECT_EQ(odd.failure(), std::nullopt);
  EXPECT_EQ(odd.failure_class(), FailureClass::kTransient);
  auto junk =
      fsched::proto::error_from_reply(502, nlohmann::json::value_t::discarded, "node1:6818");
  EXPECT_STREQ(junk.what(), "HTTP 502 from node1:6818");
  EXPECT_EQ(junk.failure(), std::nullopt);
}

// Over a real server and client (munged must run, as for rpc_test): the class a
// handler throws is the class the caller catches.
TEST(FailureClass, ClassCrossesTheWire) {
  using namespace fsched::proto;
  Server server;
  server.route("POST", "/v1/node/restore", [](const Request&) -> nlohmann::json {
    throw RpcError(422, "restore of job 5 on node1 failed: pages.img: checksum mismatch",
                   FailureClass::kImage);
  });
  server.route("GET", "/v1/plain",
               [](const Request&) -> nlohmann::json { throw fsched::Error("boom"); });
  uint16_t port = server.bind("127.0.0.1", 0);
  std::thread t([&] { server.serve(); });
  Client c("127.0.0.1", port, {}, 10);
  try {
    c.call("POST", "/v1/node/restore", nlohmann::json{{"job_id", 5}});
    ADD_FAILURE() << "no error";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.status(), 422);
    EXPECT_EQ(e.failure(), FailureClass::kImage);
    EXPECT_NE(std::string(e.what()).find("checksum mismatch"), std::string::npos) << e.what();
  }
  try {
    c.call("GET", "/v1/plain");
    ADD_FAILURE() << "no error";
  } catch (const RpcError& e) {
    EXPECT_EQ(e.status(), 500);
    EXPECT_EQ(e.failure(), std::nullopt);
  }
  server.stop();
  t.join();
}

}  // namespace
