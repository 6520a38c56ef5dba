// What the ckpt_*kind test programs share: a failure as one "FAIL ..." line on
// stdout (exit 1), output lines written at once (the tests follow progress by lines),
// the pause between rounds, and main's dispatch by kind name.
#pragma once

#include <time.h>

#include <cerrno>
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <span>
#include <string>

namespace kindprog {

// Milliseconds between rounds (the TICK_MS argument).
inline int g_tick_ms = 50;

// "FAIL what: strerror(errno)", exit status 1.
[[noreturn]] inline void die(const std::string& what) {
  std::printf("FAIL %s: %s\n", what.c_str(), std::strerror(errno));
  std::fflush(stdout);
  std::exit(1);
}

// "FAIL what", exit status 1.
[[noreturn]] inline void fail(const std::string& what) {
  std::printf("FAIL %s\n", what.c_str());
  std::fflush(stdout);
  std::exit(1);
}

// One line of output, flushed.
inline void line(const std::string& s) {
  std::printf("%s\n", s.c_str());
  std::fflush(stdout);
}

// Sleeps g_tick_ms, whatever signals interrupt it.
inline void tick() {
  timespec ts{g_tick_ms / 1000, (g_tick_ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) < 0 && errno == EINTR) {
  }
}

// A kind of state a program can hold: its name on the command line, and its run.
struct Kind {
  const char* name;
  void (*run)(int rounds);
};

// main of `prog KIND ROUNDS [TICK_MS]`: runs the kind named for ROUNDS rounds
// (1..max_rounds) and prints "done KIND ROUNDS". Returns the exit status: 0, or 2
// with a message on stderr for a bad command line or an unknown kind.
inline int run_kind(int argc, char** argv, const char* prog, std::span<const Kind> kinds,
                    int max_rounds = INT_MAX) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: %s KIND ROUNDS [TICK_MS]\n", prog);
    return 2;
  }
  const std::string kind = argv[1];
  const int rounds = std::atoi(argv[2]);
  if (argc > 3) g_tick_ms = std::atoi(argv[3]);
  if (rounds < 1 || rounds > max_rounds || g_tick_ms < 1) {
    if (max_rounds == INT_MAX)
      std::fprintf(stderr, "%s: ROUNDS and TICK_MS must be positive\n", prog);
    else
      std::fprintf(stderr, "%s: ROUNDS (1-%d) and TICK_MS must be positive\n", prog, max_rounds);
    return 2;
  }
  for (const Kind& k : kinds) {
    if (kind != k.name) continue;
    k.run(rounds);
    line("done " + kind + " " + std::to_string(rounds));
    return 0;
  }
  std::fprintf(stderr, "%s: unknown kind %s\n", prog, kind.c_str());
  return 2;
}

}  // namespace kindprog
