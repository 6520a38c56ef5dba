#include "ctld/store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fd.h"

namespace fsched::ctld {
namespace {

// A prepared statement, finalized when it goes out of scope.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql, const std::filesystem::path& file) : db_(db) {
    if (sqlite3_prepare_v2(db, sql, -1, &st_, nullptr) != SQLITE_OK)
      fail("{}: {}: {}", file.string(), sql, sqlite3_errmsg(db));
  }
  ~Stmt() { sqlite3_finalize(st_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;
  Stmt& bind(int i, int64_t v) {
    sqlite3_bind_int64(st_, i, v);
    return *this;
  }
  Stmt& bind(int i, const std::string& v) {
    sqlite3_bind_text(st_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  // Returns true while there is a row.
  bool step() {
    int rc = sqlite3_step(st_);
    if (rc == SQLITE_ROW) return true;
    if (rc != SQLITE_DONE) fail("database: {}", sqlite3_errmsg(db_));
    return false;
  }
  std::string text(int col) {
    auto* p = sqlite3_column_text(st_, col);
    return p ? std::string(reinterpret_cast<const char*>(p),
                           static_cast<size_t>(sqlite3_column_bytes(st_, col)))
             : std::string();
  }
  int64_t integer(int col) { return sqlite3_column_int64(st_, col); }

 private:
  sqlite3* db_;
  sqlite3_stmt* st_ = nullptr;
};

// Sets path's mode when it exists; throws naming it when it cannot.
void restrict_mode(const std::filesystem::path& path, mode_t mode) {
  if (::chmod(path.c_str(), mode) < 0 && errno != ENOENT)
    fail_errno("cannot chmod {:o} {}", mode, path.string());
}

// A row's JSON as T. A row that does not parse (an unknown state written by a newer
// controller, a damaged file) stops the load with the file and the row named, rather
// than being taken for something else.
template <typename T>
T parse_row(const std::string& data, std::string_view what, int64_t job_id,
            const std::filesystem::path& file) {
  try {
    return nlohmann::json::parse(data).get<T>();
  } catch (const nlohmann::json::exception& e) {
    fail("{}: {} {}: {}", file.string(), what, job_id, e.what());
  }
}

}  // namespace

Store::Store(const std::filesystem::path& dir) : file_(dir / "fsched.db") {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) fail("cannot create StateSaveLocation {}: {}", dir.string(), ec.message());
  // The database holds every job's script and its user's whole environment: root
  // only (issue 10, item 14). Also tightens what an older controller left 0644.
  restrict_mode(dir, 0700);
  {
    // Created 0600 before SQLite opens it: SQLite gives its -wal and -shm files the
    // database file's mode.
    UniqueFd f(::open(file_.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    if (!f) fail_errno("cannot create {}", file_.string());
  }
  for (const char* suffix : {"", "-wal", "-shm", "-journal"})
    restrict_mode(file_.string() + suffix, 0600);
  if (sqlite3_open(file_.c_str(), &db_) != SQLITE_OK) {
    std::string msg = db_ ? sqlite3_errmsg(db_) : "out of memory";
    sqlite3_close(db_);
    db_ = nullptr;
    fail("cannot open {}: {}", file_.string(), msg);
  }
  sqlite3_busy_timeout(db_, 5000);
  // WAL with synchronous=NORMAL survives a crash of the controller (what a restart
  // must not lose) without an fsync per submitted job.
  exec("PRAGMA journal_mode=WAL");
  exec("PRAGMA synchronous=NORMAL");
  exec("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)");
  exec(
      "CREATE TABLE IF NOT EXISTS jobs (job_id INTEGER PRIMARY KEY, state TEXT NOT NULL, data TEXT "
      "NOT NULL)");
  exec(
      "CREATE TABLE IF NOT EXISTS scripts (job_id INTEGER PRIMARY KEY, script TEXT NOT NULL, env "
      "TEXT NOT NULL)");
  exec(
      "CREATE TABLE IF NOT EXISTS checkpoints (job_id INTEGER NOT NULL, checkpoint_id INTEGER NOT "
      "NULL,"
      " status TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (job_id, checkpoint_id))");
  exec("CREATE TABLE IF NOT EXISTS nodes (name TEXT PRIMARY KEY, data TEXT NOT NULL)");
  exec("INSERT OR IGNORE INTO meta VALUES ('next_job_id', 1)");
}

Store::~Store() { sqlite3_close(db_); }

void Store::exec(const char* sql) {
  char* err = nullptr;
  if (sqlite3_exec(db_, sql, nullptr, nullptr, &err) != SQLITE_OK) {
    std::string msg = err ? err : "unknown error";
    sqlite3_free(err);
    fail("{}: {}: {}", file_.string(), sql, msg);
  }
}

void Store::submit(Job& j, const std::string& script, const nlohmann::json& env,
                   const std::function<void(Job&)>& fill) {
  exec("BEGIN IMMEDIATE");
  try {
    Stmt get(db_, "SELECT value FROM meta WHERE key='next_job_id'", file_);
    get.step();
    j.job_id = get.integer(0);
    fill(j);
    Stmt set(db_, "UPDATE meta SET value=? WHERE key='next_job_id'", file_);
    set.bind(1, j.job_id + 1).step();
    Stmt sc(db_, "INSERT OR REPLACE INTO scripts VALUES (?, ?, ?)", file_);
    sc.bind(1, j.job_id).bind(2, script).bind(3, env.dump()).step();
    put_job(j);
    exec("COMMIT");
  } catch (...) {
    exec("ROLLBACK");
    throw;
  }
}

void Store::put_job(const Job& j) {
  Stmt s(db_, "INSERT OR REPLACE INTO jobs VALUES (?, ?, ?)", file_);
  s.bind(1, j.job_id)
      .bind(2, std::string(to_string(j.state)))
      .bind(3, nlohmann::json(j).dump())
      .step();
}

std::pair<std::string, nlohmann::json> Store::script(int64_t job_id) {
  Stmt s(db_, "SELECT script, env FROM scripts WHERE job_id=?", file_);
  s.bind(1, job_id);
  if (!s.step()) fail("job {}: its script is missing from {}", job_id, file_.string());
  return {s.text(0), nlohmann::json::parse(s.text(1))};
}

void Store::put_checkpoint(const Checkpoint& c) {
  Stmt s(db_, "INSERT OR REPLACE INTO checkpoints VALUES (?, ?, ?, ?)", file_);
  s.bind(1, c.job_id)
      .bind(2, c.checkpoint_id)
      .bind(3, std::string(to_string(c.status)))
      .bind(4, nlohmann::json(c).dump())
      .step();
}

void Store::put_node(const std::string& name, const NodeAdmin& d) {
  Stmt s(db_, "INSERT OR REPLACE INTO nodes VALUES (?, ?)", file_);
  s.bind(1, name).bind(2, nlohmann::json(d).dump()).step();
}

std::map<std::string, NodeAdmin> Store::nodes() {
  std::map<std::string, NodeAdmin> out;
  Stmt s(db_, "SELECT name, data FROM nodes", file_);
  while (s.step()) {
    std::string name = s.text(0);
    try {
      out[name] = nlohmann::json::parse(s.text(1)).get<NodeAdmin>();
    } catch (const nlohmann::json::exception& e) {
      fail("{}: node {}: {}", file_.string(), name, e.what());
    }
  }
  return out;
}

std::vector<Job> Store::jobs() {
  std::vector<Job> out;
  Stmt s(db_, "SELECT job_id, data FROM jobs ORDER BY job_id", file_);
  while (s.step()) out.push_back(parse_row<Job>(s.text(1), "job", s.integer(0), file_));
  return out;
}

std::vector<Checkpoint> Store::checkpoints() {
  std::vector<Checkpoint> out;
  Stmt s(db_, "SELECT job_id, data FROM checkpoints ORDER BY job_id, checkpoint_id", file_);
  while (s.step())
    out.push_back(parse_row<Checkpoint>(s.text(1), "checkpoint of job", s.integer(0), file_));
  return out;
}

}  // namespace fsched::ctld
