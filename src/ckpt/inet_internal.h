// Internal to the TCP and UDP unit (inet.h): what inet.cpp and inet_restore.cpp share.
#pragma once

#include <netinet/tcp.h>
#include <sys/socket.h>

#include <cstdint>
#include <string>
#include <utility>

#include "ckpt/fd_ops.h"

// linux/tcp.h's values, which glibc's netinet/tcp.h may lack.
#ifndef TCP_REPAIR_ON
#define TCP_REPAIR_ON 1
#define TCP_REPAIR_OFF 0
#endif
#ifndef TCP_REPAIR_OFF_NO_WP
#define TCP_REPAIR_OFF_NO_WP -1
#endif

namespace fsched::ckpt::inet_detail {

// Defined in inet.cpp, where each is described.
const char* tcp_state_name(int s);
const char* opt_text(int level, int name);
std::string get_opt(int fd, int level, int name);
int int_opt(int fd, int level, int name);
std::pair<std::string, int> addr_text(const sockaddr_storage& ss, const std::string& who);
void set_repair(int fd, int on, const std::string& who);
std::uint32_t queue_seq(int fd, int queue, const std::string& who);

// kInetFdOps' open, defined in inet_restore.cpp.
long open_inet_fd(const FdRestoreCtx& c, const Fd& f, const std::string& who);

}  // namespace fsched::ckpt::inet_detail
