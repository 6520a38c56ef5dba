// The controller's persistent state: one SQLite database (WAL) in StateSaveLocation.
// Every change of a job or checkpoint is written before the RPC that caused it is
// answered, so a controller restart loses nothing.
#pragma once

#include <sqlite3.h>

#include <filesystem>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "ctld/state.h"

namespace fsched::ctld {

class Store {
 public:
  // Opens (creating if needed) <dir>/fsched.db. Throws fsched::Error naming the file.
  explicit Store(const std::filesystem::path& dir);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Gives the job its id (ids are never reused, even across restarts) and stores it
  // with its script and environment in one transaction. fill runs once the id is
  // known, to derive what depends on it (output paths with %j).
  void submit(Job& j, const std::string& script, const nlohmann::json& env,
              const std::function<void(Job&)>& fill);

  void put_job(const Job& j);
  // The submitted script and environment are kept apart from the job row: they are
  // read only to launch it, so 10,000 queued jobs cost the controller little memory.
  std::pair<std::string, nlohmann::json> script(int64_t job_id);
  void put_checkpoint(const Checkpoint& c);

  // A node's DOWN state, by name; nodes() has every node stored.
  void put_node(const std::string& name, const NodeAdmin& d);
  std::map<std::string, NodeAdmin> nodes();

  std::vector<Job> jobs();
  std::vector<Checkpoint> checkpoints();

 private:
  void exec(const char* sql);
  sqlite3* db_ = nullptr;
  std::filesystem::path file_;
};

}  // namespace fsched::ctld
