// Errors that carry errno and the context in which they happened.
#pragma once

#include <cerrno>
#include <stdexcept>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace fsched {

// An error with a human-readable message saying what failed and where, and the
// errno value of the failing system call (0 when not a system-call failure).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, int err = 0)
      : std::runtime_error(err ? what + ": " + errno_text(err) : what), errno_(err) {}
  int err() const noexcept { return errno_; }

  static std::string errno_text(int err);

 private:
  int errno_;
};

// Throws Error(context, errno). Call right after a failed system call.
[[noreturn]] inline void throw_errno(const std::string& context) { throw Error(context, errno); }

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void fail_errno(fmt::format_string<Args...> f, Args&&... args) {
  int e = errno;
  throw Error(fmt::format(f, std::forward<Args>(args)...), e);
}

}  // namespace fsched
