// Errors that carry errno and the context in which they happened.
#pragma once

#include <cerrno>
#include <stdexcept>
#include <string>
#include <string_view>

#include <fmt/format.h>

namespace fsched {

// What a failure says about trying again; it travels from the engine (exit code of
// fsched-ckpt) through fschedd (HTTP status and "failure" field) to the controller,
// which decides from it whether a checkpoint is unusable (docs/failures.md).
enum class FailureClass {
  // May succeed later or on another node: out of memory, disk full, a file or binary
  // missing on this node, a busy resource, a system call that failed for a passing
  // reason. The default: not knowing better, a failure must not condemn an image.
  kTransient,
  // The image is bad or does not match: unreadable, corrupt, unsigned or tampered with,
  // a format this build does not read, a manifest that contradicts itself. Restoring
  // it again, anywhere, fails the same way.
  kImage,
  // The job holds kernel state the engine cannot checkpoint or restore exactly; the
  // dump refuses rather than lose it. Trying again dumps the same state.
  kUnsupported,
  // The command line or request is wrong.
  kUsage,
};

// An error with a human-readable message saying what failed and where, the errno
// value of the failing system call (0 when not a system-call failure) and its class.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what, int err = 0, FailureClass cls = FailureClass::kTransient)
      : std::runtime_error(err ? what + ": " + errno_text(err) : what), errno_(err), class_(cls) {}
  int err() const noexcept { return errno_; }
  FailureClass failure_class() const noexcept { return class_; }

  static std::string errno_text(int err);

 private:
  int errno_;
  FailureClass class_;
};

// The image is bad or does not match (FailureClass::kImage).
class ImageError : public Error {
 public:
  explicit ImageError(const std::string& what, int err = 0)
      : Error(what, err, FailureClass::kImage) {}
};

// The job holds state that cannot be checkpointed exactly (FailureClass::kUnsupported).
class UnsupportedError : public Error {
 public:
  explicit UnsupportedError(const std::string& what, int err = 0)
      : Error(what, err, FailureClass::kUnsupported) {}
};

// The command line or request is wrong (FailureClass::kUsage).
class UsageError : public Error {
 public:
  explicit UsageError(const std::string& what) : Error(what, 0, FailureClass::kUsage) {}
};

// Throws Error(context, errno). Call right after a failed system call.
[[noreturn]] inline void throw_errno(const std::string& context) { throw Error(context, errno); }

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

// fail() for an image that is bad or does not match: throws ImageError.
template <typename... Args>
[[noreturn]] void fail_image(fmt::format_string<Args...> f, Args&&... args) {
  throw ImageError(fmt::format(f, std::forward<Args>(args)...));
}

// fail() for kernel state the engine cannot checkpoint or restore exactly: throws
// UnsupportedError.
template <typename... Args>
[[noreturn]] void fail_unsupported(fmt::format_string<Args...> f, Args&&... args) {
  throw UnsupportedError(fmt::format(f, std::forward<Args>(args)...));
}

// fail() for a wrong command line or request: throws UsageError.
template <typename... Args>
[[noreturn]] void fail_usage(fmt::format_string<Args...> f, Args&&... args) {
  throw UsageError(fmt::format(f, std::forward<Args>(args)...));
}

template <typename... Args>
[[noreturn]] void fail_errno(fmt::format_string<Args...> f, Args&&... args) {
  int e = errno;
  throw Error(fmt::format(f, std::forward<Args>(args)...), e);
}

}  // namespace fsched
