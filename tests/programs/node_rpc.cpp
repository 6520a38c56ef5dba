// node_rpc ADDR PORT METHOD PATH [JSON]: one request of fsched's RPC protocol (MUNGE
// credential, as the caller's uid), for end-to-end tests that must send a daemon a
// request no command sends (a launch with a stale generation, tests/e2e/test_fencing.py).
// Prints the reply's JSON and exits 0, or prints "HTTP STATUS: message" and exits 1.
#include <cstdlib>
#include <iostream>

#include <nlohmann/json.hpp>

#include "proto/rpc.h"

int main(int argc, char** argv) {
  if (argc < 5) {
    std::cerr << "usage: node_rpc ADDR PORT METHOD PATH [JSON]\n";
    return 2;
  }
  try {
    fsched::proto::Client c(argv[1], static_cast<uint16_t>(std::atoi(argv[2])), {}, 30);
    nlohmann::json body = argc > 5 ? nlohmann::json::parse(argv[5]) : nlohmann::json(nullptr);
    std::cout << c.call(argv[3], argv[4], body).dump() << "\n";
    return 0;
  } catch (const fsched::proto::RpcError& e) {
    std::cout << "HTTP " << e.status() << ": " << e.what() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cout << "error: " << e.what() << "\n";
    return 3;
  }
}
