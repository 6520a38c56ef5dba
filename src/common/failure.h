// How a FailureClass (common/error.h) is written where it crosses a process boundary:
// the exit code of fsched-ckpt, and the name in fschedd's replies and op reports.
// The table of codes and statuses, and what the controller does for each class, is
// docs/failures.md.
#pragma once

#include <optional>
#include <string_view>

#include "common/error.h"

namespace fsched {

// Exit codes of fsched-ckpt dump, restore, verify and show. 0 is success; `run`
// and a foreground restore exit with the job's own status instead once the job runs.
inline constexpr int kExitTransient = 1;    // may succeed later or elsewhere (also: unclassified)
inline constexpr int kExitUsage = 2;        // bad command line or option
inline constexpr int kExitImage = 3;        // the image is bad or does not match
inline constexpr int kExitUnsupported = 4;  // the job holds state the engine cannot handle exactly

// The exit code that reports class c.
constexpr int exit_code_of(FailureClass c) {
  switch (c) {
    case FailureClass::kTransient:
      return kExitTransient;
    case FailureClass::kImage:
      return kExitImage;
    case FailureClass::kUnsupported:
      return kExitUnsupported;
    case FailureClass::kUsage:
      return kExitUsage;
  }
  return kExitTransient;
}

// The class that an fsched-ckpt exit code (non-zero) reports. 1, a death by signal
// (128 + n) and any code this build does not know are transient: not knowing better,
// a failure must not condemn an image.
constexpr FailureClass failure_class_of_exit(int code) {
  switch (code) {
    case kExitUsage:
      return FailureClass::kUsage;
    case kExitImage:
      return FailureClass::kImage;
    case kExitUnsupported:
      return FailureClass::kUnsupported;
    default:
      return FailureClass::kTransient;
  }
}

// The class's name on the wire ("failure" field of fschedd's error bodies and op
// reports) and in checkpoint reasons: "transient", "image", "unsupported", "usage".
constexpr std::string_view to_string(FailureClass c) {
  switch (c) {
    case FailureClass::kTransient:
      return "transient";
    case FailureClass::kImage:
      return "image";
    case FailureClass::kUnsupported:
      return "unsupported";
    case FailureClass::kUsage:
      return "usage";
  }
  return "transient";
}

// The class named s, or none for a name this build does not know (a newer peer's
// class), which its reader treats as transient.
constexpr std::optional<FailureClass> failure_class_from_string(std::string_view s) {
  for (auto c : {FailureClass::kTransient, FailureClass::kImage, FailureClass::kUnsupported,
                 FailureClass::kUsage})
    if (to_string(c) == s) return c;
  return std::nullopt;
}

}  // namespace fsched
