// The kind of an open file descriptor (Manifest Fd::kind): which unit dumps and
// restores it (the FdOps of fd_ops.h). Stored in manifest.json as the strings of
// kFdKindNames, which are part of the image format: never rename one.
#pragma once

#include <array>
#include <cstddef>
#include <string>
#include <string_view>
#include <utility>

#include <nlohmann/json.hpp>

#include "common/error.h"

namespace fsched::ckpt {

// Numbered from 0 without gaps: FdOps are looked up by this value (fd_ops.h).
enum class FdKind {
  kFile,      // regular file, reopened by path (files.cpp; deleted files: deleted.cpp)
  kDir,       // directory (files.cpp)
  kChr,       // /dev/null, /dev/zero, /dev/full, /dev/random, /dev/urandom (files.cpp)
  kPipe,      // pipe(2) end; Fd::file.ino is the pipe inode (pipes.cpp)
  kFifo,      // named pipe, reopened by path (pipes.cpp)
  kUnix,      // Unix socket; Fd::file.ino is the socket inode (sockets.cpp)
  kEventfd,   // eventfd(2) (eventfds.cpp)
  kEpoll,     // epoll(7) instance (eventfds.cpp)
  kTimerfd,   // timerfd_create(2) (eventfds.cpp)
  kSignalfd,  // signalfd(2) (eventfds.cpp)
  kInotify,   // inotify(7) instance (inotify.cpp)
  kPidfd,     // pidfd_open(2) fd of a process of the job (pidfd.cpp)
  kNetlink,   // netlink(7) socket (netlink.cpp; found by sockets.cpp)
  // TCP or UDP socket, IPv4 or IPv6; Fd::file.ino is the socket inode, its state the
  // Manifest::inet_sockets entry of that inode (inet.cpp)
  kInet,
  kPty,  // pseudo-terminal master (/dev/ptmx) or slave (/dev/pts/N) (tty.cpp)
};
inline constexpr std::size_t kFdKinds = 15;

// The one table of names, in enum order: JSON (de)serialization, messages and
// fsched-ckpt show.
inline constexpr std::array<std::pair<FdKind, std::string_view>, kFdKinds> kFdKindNames{{
    {FdKind::kFile, "file"},
    {FdKind::kDir, "dir"},
    {FdKind::kChr, "chr"},
    {FdKind::kPipe, "pipe"},
    {FdKind::kFifo, "fifo"},
    {FdKind::kUnix, "unix"},
    {FdKind::kEventfd, "eventfd"},
    {FdKind::kEpoll, "epoll"},
    {FdKind::kTimerfd, "timerfd"},
    {FdKind::kSignalfd, "signalfd"},
    {FdKind::kInotify, "inotify"},
    {FdKind::kPidfd, "pidfd"},
    {FdKind::kNetlink, "netlink"},
    {FdKind::kInet, "inet"},
    {FdKind::kPty, "pty"},
}};

constexpr bool fd_kind_names_in_order() {
  for (std::size_t i = 0; i < kFdKinds; ++i)
    if (static_cast<std::size_t>(kFdKindNames[i].first) != i) return false;
  return true;
}
static_assert(fd_kind_names_in_order(), "kFdKindNames must list every FdKind in enum order");

// The name of k as the manifest stores it ("file", "pipe" ...).
constexpr std::string_view to_string(FdKind k) {
  auto i = static_cast<std::size_t>(k);
  return i < kFdKinds ? kFdKindNames[i].second : "?";
}

// The kind named `name`; throws ImageError naming it if no kind has that name (an
// image from a newer or broken dumper).
inline FdKind fd_kind_from_string(std::string_view name) {
  for (auto& [kind, n] : kFdKindNames)
    if (n == name) return kind;
  throw ImageError(fmt::format("image: unknown file descriptor kind \"{}\"", name));
}

// JSON: the kind's name. (Not NLOHMANN_JSON_SERIALIZE_ENUM, which maps an unknown
// string silently to the first entry.)
inline void to_json(nlohmann::json& j, FdKind k) { j = std::string(to_string(k)); }
inline void from_json(const nlohmann::json& j, FdKind& k) {
  if (!j.is_string())
    throw ImageError("image: a file descriptor kind is not a string: " + j.dump());
  k = fd_kind_from_string(j.get_ref<const std::string&>());
}

}  // namespace fsched::ckpt
