// The controller's requests to fschedd (proto/node_requests.h): what the controller
// writes is what fschedd's decoders read, and the decoders keep refusing bad bodies.
#include <gtest/gtest.h>

#include <csignal>

#include "noded/node.h"
#include "proto/node_requests.h"
#include "proto/rpc.h"

namespace {

using fsched::proto::RpcError;
using nlohmann::json;

fsched::proto::LaunchRequest launch_request() {
  return {.job_id = 7,
          .name = "job",
          .user = "alice",
          .uid = 1000,
          .gid = 100,
          .work_dir = "/home/alice",
          .stdout_path = "/home/alice/o",
          .stderr_path = "/home/alice/e",
          .argv = {"a", "b c"},
          .script = "#!/bin/sh\n",
          .env = {{"HOME", "/home/alice"}, {"PATH", "/opt/bin"}}};
}

int status_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const RpcError& e) {
    return e.status();
  } catch (const json::exception&) {
    return 400;  // the server's answer to a json::exception
  }
  return 0;
}

}  // namespace

TEST(NodeRequests, LaunchReadsBackAsWritten) {
  auto q = launch_request();
  json body = q;
  // The keys of docs/scheduler.md.
  for (const char* key : {"job_id", "name", "user", "uid", "gid", "work_dir", "stdout", "stderr",
                          "argv", "script", "env"})
    EXPECT_TRUE(body.contains(key)) << key;
  EXPECT_FALSE(body.contains("restore_dir"));
  auto d = fsched::noded::decode_launch(body, false);
  EXPECT_EQ(d.job_id, 7);
  EXPECT_EQ(d.uid, 1000u);
  EXPECT_EQ(d.gid, 100u);
  EXPECT_EQ(d.user, "alice");
  EXPECT_EQ(d.stdout_path, "/home/alice/o");
  EXPECT_EQ(d.stderr_path, "/home/alice/e");
  EXPECT_EQ(d.work_dir, "/home/alice");
  EXPECT_EQ(d.argv, q.argv);
  EXPECT_EQ(d.env, q.env);
  EXPECT_EQ(d.script, q.script);
}

TEST(NodeRequests, RestoreNeedsItsImageAndNothingOfALaunch) {
  auto q = launch_request();
  q.restore_dir = "/ckpt/7/2";
  json body = q;
  auto d = fsched::noded::decode_launch(body, true);
  EXPECT_EQ(d.restore_dir, "/ckpt/7/2");
  EXPECT_EQ(d.env, (std::map<std::string, std::string>{{"PATH", "/usr/bin:/bin"}}))
      << "the restorer gets a PATH only";
  // A restore body needs no launch fields.
  json minimal = {{"job_id", 7},
                  {"script", "#!/bin/sh\n"},
                  {"uid", 1},
                  {"gid", 1},
                  {"restore_dir", "/ckpt/7/2"}};
  EXPECT_EQ(fsched::noded::decode_launch(minimal, true).restore_dir, "/ckpt/7/2");
  // Each route takes its own body.
  EXPECT_EQ(status_of([&] { fsched::noded::decode_launch(body, false); }), 400);
  EXPECT_EQ(status_of([&] { fsched::noded::decode_launch(json(launch_request()), true); }), 400);
  minimal["restore_dir"] = "";
  EXPECT_EQ(status_of([&] { fsched::noded::decode_launch(minimal, true); }), 400);
}

TEST(NodeRequests, BadFieldsAre400) {
  json body = launch_request();
  for (auto [key, value] : std::vector<std::pair<std::string, json>>{{"uid", -1},
                                                                     {"uid", 4294967296LL},
                                                                     {"gid", 1e300},
                                                                     {"job_id", "7"},
                                                                     {"script", 3},
                                                                     {"argv", "a b"}}) {
    json b = body;
    b[key] = value;
    EXPECT_EQ(status_of([&] { fsched::noded::decode_launch(b, false); }), 400)
        << key << " = " << value.dump();
  }
  for (const char* key :
       {"job_id", "script", "uid", "gid", "stdout", "stderr", "work_dir", "user"}) {
    json b = body;
    b.erase(key);
    EXPECT_EQ(status_of([&] { fsched::noded::decode_launch(b, false); }), 400) << "without " << key;
  }
  EXPECT_EQ(status_of([&] { fsched::noded::decode_launch(json::array(), false); }), 400);
  EXPECT_EQ(status_of([&] {
              fsched::noded::decode_signal(json{{"job_id", 1}, {"signal", 1LL << 40}});
            }),
            400);
  EXPECT_EQ(status_of([&] {
              fsched::noded::decode_checkpoint(json{{"job_id", 1}}, 600);
            }),
            400)
      << "no dir";
  // A parent image must lie beside the new one; it excludes a pre-dump; tracking needs
  // the job to run on.
  for (const json& bad :
       {json{{"job_id", 1}, {"dir", "/c/1/2"}, {"parent", "/c/9/1"}},
        json{{"job_id", 1}, {"dir", "/c/1/2"}, {"parent", "/c/1/1"}, {"pre_dump_delay", 0}},
        json{{"job_id", 1}, {"dir", "/c/1/2"}, {"leave_running", false}, {"track_mem", true}},
        json{{"job_id", 1}, {"dir", "/c/1/2"}, {"track_method", "soft-dirty"}},
        json{{"job_id", 1}, {"dir", "/c/1/2"}, {"track_method", 1}}})
    EXPECT_EQ(status_of([&] { fsched::noded::decode_checkpoint(bad, 600); }), 400) << bad.dump();
  auto ok = fsched::noded::decode_checkpoint(
      json{{"job_id", 1}, {"dir", "/c/1/2"}, {"parent", "/c/1/1"}, {"track_mem", true}}, 600);
  EXPECT_EQ(ok.parent, "/c/1/1");
  EXPECT_TRUE(ok.track_mem);
  EXPECT_EQ(ok.pre_dump_delay, -1);
  EXPECT_EQ(ok.track_method, "");
  EXPECT_EQ(fsched::noded::decode_checkpoint(
                json{{"job_id", 1}, {"dir", "/c/1/2"}, {"track_method", "hash"}}, 600)
                .track_method,
            "hash");
}

TEST(NodeRequests, CheckpointAndSignalDefaults) {
  json c = fsched::proto::CheckpointRequest{
      .job_id = 3, .dir = "/ckpt/3/1", .leave_running = false, .timeout = 90};
  EXPECT_EQ(c,
            (json{{"job_id", 3}, {"dir", "/ckpt/3/1"}, {"leave_running", false}, {"timeout", 90}}));
  auto d = fsched::noded::decode_checkpoint(c, 600);
  EXPECT_EQ(d.timeout, 90);
  EXPECT_FALSE(d.leave_running);
  d = fsched::noded::decode_checkpoint(json{{"job_id", 3}, {"dir", "/x"}}, 600);
  EXPECT_EQ(d.timeout, 600) << "absent: the node's CheckpointTimeout";
  EXPECT_TRUE(d.leave_running);

  json s = fsched::proto::SignalRequest{.job_id = 4, .signal = SIGINT, .kill_wait = 5};
  auto sd = fsched::noded::decode_signal(s);
  EXPECT_EQ(sd.signal, SIGINT);
  EXPECT_EQ(sd.kill_wait, 5);
  sd = fsched::noded::decode_signal(json{{"job_id", 4}});
  EXPECT_EQ(sd.signal, SIGTERM);
  EXPECT_EQ(sd.kill_wait, -1);
}
