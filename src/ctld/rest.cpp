// The REST API and the web console (docs/rest.md): JWTs issued by `scontrol token`
// over the MUNGE API, checked on the REST port; the console's files from WebRoot; and
// the routes only the console needs (whoami, per-hour checkpoint counts).
#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <map>

#include <spdlog/spdlog.h>

#include "common/error.h"
#include "common/fd.h"
#include "ctld/controller.h"
#include "ctld/controller_impl.h"
#include "proto/jwt.h"

namespace fsched::ctld {
namespace {

// What the console's files may add up to: WebRoot holds a few hundred KiB.
constexpr size_t kMaxWebFileBytes = size_t{16} << 20;
constexpr size_t kMaxWebBytes = size_t{64} << 20;
constexpr int kStatsHours = 24;  // GET /v1/checkpoints/stats

// The user `name` from the passwd database, nullopt if there is none.
std::optional<proto::Caller> lookup_user(const std::string& name) {
  passwd pw{};
  passwd* found = nullptr;
  std::string buf(16384, '\0');
  if (::getpwnam_r(name.c_str(), &pw, buf.data(), buf.size(), &found) != 0 || !found)
    return std::nullopt;
  return proto::Caller{found->pw_uid, found->pw_gid};
}

std::string content_type(const std::filesystem::path& p) {  // by its extension
  static const std::map<std::string, std::string, std::less<>> types = {
      {".html", "text/html; charset=utf-8"},
      {".js", "text/javascript; charset=utf-8"},
      {".mjs", "text/javascript; charset=utf-8"},
      {".css", "text/css; charset=utf-8"},
      {".json", "application/json"},
      {".map", "application/json"},
      {".svg", "image/svg+xml"},
      {".png", "image/png"},
      {".ico", "image/x-icon"},
      {".txt", "text/plain; charset=utf-8"}};
  auto it = types.find(p.extension().string());
  return it == types.end() ? "application/octet-stream" : it->second;
}

// The console runs with the token of whoever logs in, root's too: a file of it that
// another user could write would be that user's script in root's session. So every file
// and folder must be fschedctld's own (its euid: root) and writable by no one else, and
// a file readable by all (a root-only file linked in is not published).
void check_web_owner(const std::filesystem::path& path, const struct stat& st, bool dir) {
  if (st.st_uid != ::geteuid() || (st.st_mode & 022))
    fail(
        "WebRoot: {} must be owned by uid {} and writable by no one else (owner {}, mode "
        "{:04o})",
        path.string(), ::geteuid(), st.st_uid, st.st_mode & 07777);
  if (!dir && !(st.st_mode & S_IROTH))
    fail("WebRoot: {} is not readable by all (mode {:04o}): the console's files are public",
         path.string(), st.st_mode & 07777);
}

// Reads the regular file `path` (not following a link), at most kMaxWebFileBytes.
std::string read_web_file(const std::filesystem::path& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_NOFOLLOW | O_CLOEXEC));
  if (!fd) fail_errno("WebRoot: cannot open {}", path.string());
  struct stat st {};
  if (::fstat(fd.get(), &st) < 0) fail_errno("WebRoot: cannot stat {}", path.string());
  if (!S_ISREG(st.st_mode)) fail("WebRoot: {} is not a regular file", path.string());
  check_web_owner(path, st, false);
  if (static_cast<size_t>(st.st_size) > kMaxWebFileBytes)
    fail("WebRoot: {} is {} bytes, over the limit of {}", path.string(), st.st_size,
         kMaxWebFileBytes);
  std::string out(static_cast<size_t>(st.st_size), '\0');
  ssize_t got = read_up_to(fd.get(), out.data(), out.size());
  if (got < 0) fail_errno("WebRoot: cannot read {}", path.string());
  out.resize(static_cast<size_t>(got));
  return out;
}

// WebRoot's files and those of its folders (one level), by path below root: links are
// not followed, each file and folder passes check_web_owner, and all add up to at most
// kMaxWebBytes. Throws fsched::Error saying which file is wrong.
std::vector<std::pair<std::string, std::string>> read_web_root(const std::filesystem::path& root) {
  std::vector<std::pair<std::string, std::string>> out;
  size_t total = 0;
  auto folder = [&](const std::filesystem::path& dir, const std::string& prefix, bool top) {
    struct stat st {};
    if (::lstat(dir.c_str(), &st) < 0) fail_errno("WebRoot: cannot stat {}", dir.string());
    if (!S_ISDIR(st.st_mode)) fail("WebRoot: {} is not a directory", dir.string());
    check_web_owner(dir, st, true);
    std::vector<std::filesystem::path> subdirs;
    for (auto& e : std::filesystem::directory_iterator(dir)) {
      if (e.is_symlink()) continue;  // never followed: only what the build put there
      if (e.is_directory()) {
        if (top) subdirs.push_back(e.path());
        continue;
      }
      std::string data = read_web_file(e.path());
      total += data.size();
      if (total > kMaxWebBytes)
        fail("WebRoot: {}: its files add up to more than {} bytes", root.string(), kMaxWebBytes);
      out.emplace_back(prefix + e.path().filename().string(), std::move(data));
    }
    return subdirs;
  };
  for (auto& d : folder(root, "", true)) folder(d, d.filename().string() + "/", false);
  return out;
}

}  // namespace

void Controller::load_jwt_key() {
  if (cfg_.rest_port) jwt_key_ = proto::jwt::load_or_create_key(cfg_.jwt_key);
}

proto::Caller Controller::verify_token(std::string_view token) const {
  auto claims = proto::jwt::verify(jwt_key_, token, static_cast<int64_t>(now_s()));
  auto who = lookup_user(claims.user);
  if (!who)
    throw RpcError(401, fmt::format("authentication failed: the token names user '{}', who "
                                    "does not exist on this host",
                                    claims.user));
  // The name must still be the account it was issued to: a name reused by a new
  // account, or another name service answering first, is another user.
  if (who->uid != claims.uid)
    throw RpcError(401, fmt::format("authentication failed: the token was issued to uid {} as "
                                    "'{}', which is now uid {}",
                                    claims.uid, claims.user, who->uid));
  return *who;
}

nlohmann::json Controller::issue_token(const proto::Request& r) {
  if (!cfg_.rest_port)
    throw RpcError(409,
                   "tokens are for the REST API, which is off: set RestPort (and "
                   "AuthAltTypes = auth/jwt) in fsched.conf");
  int64_t lifespan = proto::int_field(r.body, "lifespan", proto::jwt::kDefaultLifespan, 1,
                                      proto::jwt::kMaxLifespan);
  // The caller's own name must lead back to the caller: a uid without a passwd entry
  // has its number for a name, which may be another account's name.
  std::string user = user_name(r.caller.uid);
  auto account = lookup_user(user);
  if (!account || account->uid != r.caller.uid)
    throw RpcError(409, fmt::format("uid {} has no user name of its own: a token names its user "
                                    "by name",
                                    r.caller.uid));
  if (r.body.is_object() && r.body.contains("username") && !r.body["username"].is_null()) {
    auto asked = field<std::string>(r.body, "username", "");
    if (asked != user) {
      if (!r.caller.is_root())
        throw RpcError(403,
                       fmt::format("only root may ask for a token of another user ({})", asked));
      account = lookup_user(asked);
      if (!account) throw RpcError(404, fmt::format("no user '{}'", asked));
      user = asked;
    }
  }
  proto::jwt::Claims c;
  c.user = user;
  c.uid = account->uid;
  c.issued = static_cast<int64_t>(now_s());
  c.expires = c.issued + lifespan;
  spdlog::info("token for {} (uid {}, lifespan {} s) issued to uid {}", user, c.uid, lifespan,
               r.caller.uid);
  return {{"token", proto::jwt::sign(jwt_key_, c)}, {"user", user}, {"expires", c.expires}};
}

nlohmann::json Controller::update_job(const proto::Request& r) {
  Lock lk(mu_);
  Job& j = job_of(r.params.at(0));
  check_owner(j, r.caller);
  if (!r.body.is_object() || r.body.empty())
    throw RpcError(400, "nothing to update: expected {\"num_retained\": N}");
  for (auto& [k, v] : r.body.items())
    if (k != "num_retained")
      throw RpcError(400, fmt::format("field '{}' cannot be updated (only num_retained)", k));
  j.num_retained = static_cast<int>(proto::int_field(r.body, "num_retained", 0, 0, kMaxRetained));
  note(j, j.num_retained ? fmt::format("keeps {} checkpoints", j.num_retained)
                         : fmt::format("keeps CRIU_MaxEpochs = {} checkpoints", cfg_.max_epochs));
  save(j);
  // Fewer kept: the surplus goes now, not at the next checkpoint.
  retain(j);
  return api(j);
}

nlohmann::json Controller::checkpoint_stats(const proto::Request&) {
  Lock lk(mu_);
  double now = now_s();
  int64_t last_hour = static_cast<int64_t>(now) / 3600 * 3600;
  int64_t first_hour = last_hour - (kStatsHours - 1) * 3600;
  std::vector<std::map<std::string, int64_t>> counts(kStatsHours);
  for (auto& [id, list] : ckpts_)
    for (auto& c : list) {
      auto hour = static_cast<int64_t>(c.trigger_time) / 3600 * 3600;
      if (hour < first_hour || hour > last_hour) continue;
      ++counts[static_cast<size_t>((hour - first_hour) / 3600)][std::string(to_string(c.status))];
    }
  json hours = json::array();
  for (int i = 0; i < kStatsHours; ++i)
    hours.push_back(
        {{"hour", first_hour + int64_t{i} * 3600}, {"counts", counts[static_cast<size_t>(i)]}});
  return {{"hours", std::move(hours)}};
}

void Controller::add_user_routes(proto::Server& s) {
  s.route("GET", "/v1/ping", [this](const proto::Request&) {
    return json{{"cluster", cfg_.cluster_name}, {"time", now_s()}};
  });
  s.route("POST", "/v1/jobs", handler(&Controller::submit));
  s.route_raw("GET", "/v1/jobs", [this](const proto::Request& r) { return list_jobs(r); });
  s.route("GET", "/v1/jobs/{}", handler(&Controller::show_job));
  s.route("POST", "/v1/jobs/{}/signal", handler(&Controller::signal_job));
  s.route("POST", "/v1/jobs/{}/cancel", handler(&Controller::cancel_job));
  s.route("POST", "/v1/jobs/{}/hold",
          [this](const proto::Request& r) { return hold_job(r, true); });
  s.route("POST", "/v1/jobs/{}/release",
          [this](const proto::Request& r) { return hold_job(r, false); });
  s.route("POST", "/v1/jobs/{}/requeue", handler(&Controller::requeue_job));
  s.route("POST", "/v1/jobs/{}/checkpoint",
          [this](const proto::Request& r) { return checkpoint_job(r, CheckpointSource::Manual); });
  s.route("POST", "/v1/jobs/{}/vacate",
          [this](const proto::Request& r) { return checkpoint_job(r, CheckpointSource::Vacate); });
  s.route("POST", "/v1/jobs/{}/restart", handler(&Controller::restart_job));
  s.route("POST", "/v1/jobs/{}/suspend", handler(&Controller::suspend_job));
  s.route("POST", "/v1/jobs/{}/resume", handler(&Controller::resume_job));
  s.route("POST", "/v1/jobs/{}/update", handler(&Controller::update_job));
  s.route("GET", "/v1/jobs/{}/checkpoints", handler(&Controller::list_checkpoints));
  s.route("DELETE", "/v1/jobs/{}/checkpoints/{}", handler(&Controller::delete_checkpoint));
  s.route("GET", "/v1/checkpoints/stats", handler(&Controller::checkpoint_stats));
  s.route("GET", "/v1/nodes", handler(&Controller::list_nodes));
  s.route("POST", "/v1/nodes/{}/update", handler(&Controller::update_node));
  s.route("GET", "/v1/partitions", handler(&Controller::list_partitions));
}

void Controller::add_rest_routes(proto::Server& s) {
  s.use_tokens([this](std::string_view token) { return verify_token(token); });
  add_user_routes(s);
  s.route("GET", "/v1/whoami", [](const proto::Request& r) {
    return json{
        {"user", user_name(r.caller.uid)}, {"uid", r.caller.uid}, {"root", r.caller.is_root()}};
  });
  // The console: WebRoot's files (and one level of folders) at /console/, read once now.
  bool explicit_root = !cfg_.web_root.empty();
  std::filesystem::path root = explicit_root ? cfg_.web_root : FSCHED_DEFAULT_WEB_ROOT;
  std::vector<std::pair<std::string, std::string>> files;  // path below root, content
  try {
    files = read_web_root(root);
  } catch (const Error& e) {
    if (explicit_root) throw;
    spdlog::warn("no web console (the default WebRoot): {}", e.what());
    return;
  }
  for (auto& [rel, data] : files) {
    std::string type = content_type(rel);
    if (rel == "openapi.json") {
      s.file("/openapi.json", data, type);
      s.file("/openapi/v3", data, type);
    }
    if (rel == "index.html") s.file("/console/", data, type);
    s.file("/console/" + rel, std::move(data), type);
  }
  s.redirect("/", "/console/");
  s.redirect("/console", "/console/");
  spdlog::info("web console: {} files from {}", files.size(), root.string());
}

}  // namespace fsched::ctld
