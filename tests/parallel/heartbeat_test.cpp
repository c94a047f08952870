// Heartbeat files (Note [Heartbeats], src/parallel/heartbeat.h): the text round-trips and a torn or
// foreign file is not taken for a heartbeat; the verdict names exactly the members whose count is
// below the overdue collective's ordinal, says why it cannot tell for the others, and gives each
// missing rank's host, pid, step, count and what it is doing; and a live heartbeat (started on a
// one-rank world, with a watched communicator) writes the counts of the collectives issued and
// removes its file when it ends. The end-to-end case under mpirun is
// tests/mpi/train_fault_stall.sh.
#include <chrono>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>
#include <sys/stat.h>
#include <torch/torch.h>

#include "common/error.h"
#include "parallel/groups.h"
#include "parallel/heartbeat.h"
#include "parallel/watchdog.h"
#include "temp_folder.h"

namespace sy {
namespace {

using detail::Heartbeat;
using sy::testing::TempFolder;

Heartbeat beat_of(int rank, uint64_t job, std::vector<Heartbeat::Count> counts, std::string busy,
                  int64_t written_ms = 1'000'000) {
  Heartbeat hb;
  hb.job = job;
  hb.rank = rank;
  hb.world_size = 4;
  hb.host = "node" + std::to_string(rank / 2);
  hb.pid = 100 + rank;
  hb.written_ms = written_ms;
  hb.step = 3;
  hb.counts = std::move(counts);
  hb.busy = std::move(busy);
  return hb;
}

bool exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

TEST(Heartbeat, TextRoundTrips) {
  const Heartbeat hb =
      beat_of(2, 0xfedcba9876543210ull, {{"world 0,1,2,3 #0", 7}, {"ep 0,1 #1", 42}},
              "stalled (not in a collective) at 'debug.stall_rank' for 2.0 s");
  const std::string text = detail::format_heartbeat(hb);
  const std::optional<Heartbeat> back = detail::parse_heartbeat(text);
  ASSERT_TRUE(back.has_value()) << text;
  EXPECT_EQ(back->job, 0xfedcba9876543210ull);
  EXPECT_EQ(back->rank, 2);
  EXPECT_EQ(back->world_size, 4);
  EXPECT_EQ(back->host, "node1");
  EXPECT_EQ(back->pid, 102);
  EXPECT_EQ(back->written_ms, 1'000'000);
  EXPECT_EQ(back->step, 3);
  ASSERT_EQ(back->counts.size(), 2u);
  EXPECT_EQ(back->counts[0].comm, "world 0,1,2,3 #0");
  EXPECT_EQ(back->counts[0].begun, 7u);
  EXPECT_EQ(back->counts[1].comm, "ep 0,1 #1");
  EXPECT_EQ(back->counts[1].begun, 42u);
  EXPECT_EQ(back->busy, hb.busy);
  EXPECT_EQ(detail::format_heartbeat(*back), text);
}

TEST(Heartbeat, TornOrForeignTextIsNotAHeartbeat) {
  const std::string text = detail::format_heartbeat(beat_of(1, 5, {{"ep 0,1 #0", 3}}, ""));
  const size_t end = text.rfind("end\n");
  ASSERT_NE(end, std::string::npos);
  EXPECT_FALSE(detail::parse_heartbeat(text.substr(0, end)).has_value());  // torn before "end"
  EXPECT_FALSE(detail::parse_heartbeat("").has_value());
  EXPECT_FALSE(detail::parse_heartbeat("hello\n" + text.substr(text.find('\n') + 1)).has_value());
  EXPECT_FALSE(detail::parse_heartbeat("switchyard heartbeat 1\nend\n").has_value());  // no job
}

// Rank 0 waits in collective 42 of "ep 0,1,2,3 #0". Rank 1 began it (count 42: it waits too),
// rank 2 did not (41: it stalled), rank 3's file is missing.
TEST(Heartbeat, VerdictNamesTheMembersBehind) {
  TempFolder dir("heartbeat");
  const std::string comm = "ep 0,1,2,3 #0";
  const uint64_t job = 77;
  detail::write_heartbeat(dir.path(),
                          beat_of(1, job, {{"world 0,1,2,3 #0", 5}, {comm, 42}},
                                  "all_to_all_single on ep 0,1,2,3 #0 (collective 42) at "
                                  "'moe block 0: dispatch' for 6.0 s"));
  detail::write_heartbeat(
      dir.path(),
      beat_of(2, job, {{"world 0,1,2,3 #0", 5}, {comm, 41}},
              "stalled (not in a collective) at 'debug.stall_rank' for 6.2 s", 1'000'000));
  std::vector<int> missing;
  std::vector<std::string> details;
  detail::missing_by_heartbeats({comm, 42, {0, 1, 2, 3}, 0}, dir.path(), job,
                                /*now_ms=*/1'000'400, missing, details);
  EXPECT_EQ(missing, std::vector<int>{2});
  ASSERT_EQ(details.size(), 2u);
  EXPECT_EQ(details[0],
            "rank 2 (host node1, pid 102; heartbeat 0.4 s old): step 3, 41 of ep 0,1,2,3 #0's "
            "collectives begun (the overdue one is 42); busy: stalled (not in a collective) at "
            "'debug.stall_rank' for 6.2 s");
  EXPECT_EQ(details[1], "not known whether these ranks arrived: 3: no heartbeat file in " +
                            dir.path() +
                            " (not started yet, or the folder is not shared with this host)");

  // The same files seen by a rank of another job, and a communicator no file lists.
  missing.clear();
  details.clear();
  detail::missing_by_heartbeats({comm, 42, {0, 1, 2}, 0}, dir.path(), job + 1, 1'000'400, missing,
                                details);
  EXPECT_TRUE(missing.empty());
  ASSERT_EQ(details.size(), 1u);
  EXPECT_EQ(details[0],
            "not known whether these ranks arrived: 1, 2: the heartbeat file is another job's");
  missing.clear();
  details.clear();
  detail::missing_by_heartbeats({"dp 0,2 #0", 9, {0, 2}, 0}, dir.path(), job, 1'000'400, missing,
                                details);
  EXPECT_TRUE(missing.empty());
  ASSERT_EQ(details.size(), 1u);
  EXPECT_EQ(details[0],
            "not known whether these ranks arrived: 2: no communicator dp 0,2 #0 in the heartbeat");

  // Every member at or past the ordinal: nobody is missing, nothing is unknown.
  missing.clear();
  details.clear();
  detail::missing_by_heartbeats({comm, 41, {0, 1, 2}, 0}, dir.path(), job, 1'000'400, missing,
                                details);
  EXPECT_TRUE(missing.empty());
  EXPECT_TRUE(details.empty());
}

// A live heartbeat on a one-rank world: the watchdog thread rewrites the file about once a second
// with the counts of the watched communicators; ending the handle removes the file and folder.
TEST(Heartbeat, LiveHeartbeatCountsCollectivesAndIsRemovedAtTheEnd) {
  TempFolder dir("heartbeat");
  const std::string hb_dir = dir / "heartbeats";
  auto ctx = std::make_shared<RankContext>(0, 1);
  {
    std::shared_ptr<HeartbeatHandle> handle =
        start_heartbeat(make_self_communicator(), ctx, hb_dir);
    const std::optional<Heartbeat> first = detail::read_heartbeat(hb_dir, 0);
    ASSERT_TRUE(first.has_value()) << "no file right after start_heartbeat";
    EXPECT_NE(first->job, 0u);
    EXPECT_EQ(first->rank, 0);
    EXPECT_EQ(first->step, -1);

    CommPtr watched =
        watch_communicator(make_self_communicator(), "world", ctx, WatchOptions{30.0, false});
    at::Tensor t = at::ones({3});
    for (int i = 0; i < 5; ++i) watched->all_reduce(t);
    watched->barrier();  // an all_reduce too: 6 collectives
    ctx->set_step(9);
    // The watchdog thread writes within about a second of the change.
    std::optional<Heartbeat> now;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
    while (std::chrono::steady_clock::now() < deadline) {
      now = detail::read_heartbeat(hb_dir, 0);
      if (now && now->step == 9) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    ASSERT_TRUE(now.has_value());
    EXPECT_EQ(now->step, 9);
    EXPECT_EQ(now->job, first->job);
    bool found = false;
    for (const Heartbeat::Count& c : now->counts) {
      if (c.comm.rfind("world 0 #", 0) == 0) {
        found = true;
        EXPECT_EQ(c.begun, 6u) << c.comm;
      }
    }
    EXPECT_TRUE(found) << detail::format_heartbeat(*now);
    EXPECT_TRUE(now->busy.empty()) << now->busy;

    // A second heartbeat in the same process is refused.
    try {
      start_heartbeat(make_self_communicator(), ctx, hb_dir);
      ADD_FAILURE() << "a second heartbeat started";
    } catch (const Error& e) {
      EXPECT_NE(e.message().find("already writes one"), std::string::npos) << e.message();
    }
  }
  EXPECT_FALSE(exists(detail::heartbeat_path(hb_dir, 0)));
  EXPECT_FALSE(exists(hb_dir));
}

TEST(Heartbeat, UnwritableFolderIsOneClearError) {
  TempFolder dir("heartbeat");
  std::ofstream(dir / "file") << "x";
  auto ctx = std::make_shared<RankContext>(0, 1);
  try {
    start_heartbeat(make_self_communicator(), ctx, dir / "file/heartbeats");
    ADD_FAILURE() << "a heartbeat under a file started";
  } catch (const Error& e) {
    EXPECT_NE(
        e.message().find("parallel.timeout_s: the heartbeat file of rank 0 cannot be written"),
        std::string::npos)
        << e.message();
    EXPECT_NE(e.message().find(dir / "file/heartbeats"), std::string::npos) << e.message();
  }
  // The failed start left nothing behind: a new one starts.
  auto handle = start_heartbeat(make_self_communicator(), ctx, dir / "heartbeats");
  EXPECT_TRUE(exists(detail::heartbeat_path(dir / "heartbeats", 0)));
}

}  // namespace
}  // namespace sy
