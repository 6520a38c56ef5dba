#include "common/error.h"

#include <cstring>

namespace fsched {

std::string Error::errno_text(int err) {
  char buf[128];
  // GNU strerror_r returns a pointer that may or may not be buf.
  const char* s = strerror_r(err, buf, sizeof buf);
  return fmt::format("{} ({})", s, strerrorname_np(err) ? strerrorname_np(err) : "?");
}

}  // namespace fsched
