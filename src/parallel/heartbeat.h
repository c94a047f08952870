// Heartbeat files: how the watchdog of one MPI process names the ranks that did not reach a
// collective (Note [Missing ranks] in watchdog.cpp). Internal to src/parallel.
//
// Note [Heartbeats]: under MPI or NCCL a process sees only its own operations, so a rank that
// waits too long cannot tell from its own registry which peers never arrived. Each rank's
// watchdog thread therefore writes, about once a second, <dir>/rank_<N>.txt (dir is
// <train.out_dir>/heartbeats, on the file system the checkpoints already share): the job's id,
// the rank's step, for every watched communicator how many collectives it has begun, and the
// operation it is in now (a collective or a debug stall), if any. Communicators are named by
// their group name, member world ranks and creation ordinal ("ep 0,1,2,3 #0"): every rank
// creates and uses them in the same order, so the n-th collective of "ep 0,1,2,3 #0" is the same
// collective on every member. When an operation (the k-th of its communicator) is overdue, the
// waiting rank reads its peers' files: a member whose count is below k never began it.
//
// A file is written to <name>.tmp and renamed (no fsync: it is only read by a live job's
// peers), so a reader sees a whole file or the previous one. A rank whose file is missing, from
// another job, or without the communicator is reported as unknown, never as missing. A file is at
// most one write interval old, so a peer that arrived in the last interval before the dump is
// still counted as missing: the dump gives each file's age.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace sy::detail {

// One rank's heartbeat, as written and read.
struct Heartbeat {
  uint64_t job = 0;  // the same on every rank of one job (make_groups broadcasts it)
  int rank = 0, world_size = 1;
  std::string host;
  int64_t pid = 0;
  int64_t written_ms = 0;  // wall clock, milliseconds since the Unix epoch
  int64_t step = -1;       // RankContext::step(); -1 before step 0
  struct Count {
    std::string comm;  // "ep 0,1,2,3 #0": group name, member world ranks, creation ordinal
    uint64_t begun = 0;
  };
  std::vector<Count> counts;
  // The operation the rank is in now, as the dump describes it ("" when none): e.g.
  // "all_to_all_single on ep 0,1,2,3 #0 (collective 42) at 'moe block 0: dispatch' for 3.1 s".
  std::string busy;
};

// The file's text, and back; parse_heartbeat returns nothing for a text that is not a whole
// heartbeat.
std::string format_heartbeat(const Heartbeat& hb);
std::optional<Heartbeat> parse_heartbeat(const std::string& text);

// <dir>/rank_<rank>.txt
std::string heartbeat_path(const std::string& dir, int rank);
// Writes hb to heartbeat_path(dir, hb.rank) (tmp + rename, creating dir); throws naming the file.
void write_heartbeat(const std::string& dir, const Heartbeat& hb);
// The heartbeat of `rank` in `dir`; nothing when the file is missing or not a heartbeat.
std::optional<Heartbeat> read_heartbeat(const std::string& dir, int rank);

// The overdue operation, as the verdict needs it: the `seq`-th collective (1-based) of
// communicator `comm` of the group of world ranks `members`, overdue on rank `self`.
struct OverdueOp {
  std::string comm;
  uint64_t seq = 0;
  std::vector<int> members;
  int self = 0;
};

// Which members did not begin the overdue operation, by their heartbeats in `dir` of job `job`,
// read at `now_ms`: `missing` gets their ranks, `details` one line for each of them (its host,
// pid, step, count, what it is doing and the file's age) and one line for the members whose
// heartbeat could not tell (no file, another job, no such communicator).
void missing_by_heartbeats(const OverdueOp& op, const std::string& dir, uint64_t job,
                           int64_t now_ms, std::vector<int>& missing,
                           std::vector<std::string>& details);

// Wall-clock milliseconds since the Unix epoch.
int64_t wall_ms();

}  // namespace sy::detail
