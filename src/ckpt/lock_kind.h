// The kind of a file lock (Manifest FileLock::kind, locks.h): who owns it and with
// which call it is taken again. Stored in manifest.json as the strings below, which
// are part of the image format: never rename one.
#pragma once

#include <nlohmann/json.hpp>

namespace fsched::ckpt {

enum class LockKind {
  kUnknown,  // a name this engine does not know (an image of a newer one): refused
  kPosix,    // fcntl(2) F_SETLK record lock: owned by the process
  kOfd,      // fcntl(2) F_OFD_SETLK: owned by the open file description
  kFlock,    // flock(2): owned by the open file description
  kLease,    // fcntl(2) F_SETLEASE: owned by the open file description
};

NLOHMANN_JSON_SERIALIZE_ENUM(LockKind, {
                                           {LockKind::kUnknown, nullptr},
                                           {LockKind::kPosix, "posix"},
                                           {LockKind::kOfd, "ofd"},
                                           {LockKind::kFlock, "flock"},
                                           {LockKind::kLease, "lease"},
                                       })

}  // namespace fsched::ckpt
