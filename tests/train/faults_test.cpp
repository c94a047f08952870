// The fault-injection hooks (train/faults.h) in one process: nothing happens unless both the
// rank and the step match; "throw" throws the documented sentence; a stall waits until the fault
// flag is set and then throws naming the stall and the reason. (crash_mode "exit" ends the
// process: tests/apps/cli_faults_test.cpp and tests/mpi/train_fault_crash.sh run it.)
#include <gtest/gtest.h>

#include <chrono>
#include <string>
#include <thread>

#include "common/error.h"
#include "config/config.h"
#include "parallel/watchdog.h"
#include "train/faults.h"

namespace sy {
namespace {

TEST(Faults, OffByDefaultAndOnlyOnTheMatchingRankAndStep) {
  DebugConfig off;
  for (int rank = 0; rank < 4; ++rank) {
    for (int64_t step = 0; step < 10; ++step)
      EXPECT_NO_THROW(inject_faults_before_step(off, rank, step));
  }
  DebugConfig crash;
  crash.crash_rank = 1;
  crash.crash_step = 5;
  crash.crash_mode =
      CrashMode::kExit;  // never reached below: a wrong rank or step must not exit either
  EXPECT_NO_THROW(inject_faults_before_step(crash, 0, 5));
  EXPECT_NO_THROW(inject_faults_before_step(crash, 1, 4));
  EXPECT_NO_THROW(inject_faults_before_step(crash, 1, 6));
}

TEST(Faults, ThrowModeNamesRankAndStep) {
  DebugConfig d;
  d.crash_rank = 1;
  d.crash_step = 5;
  try {
    inject_faults_before_step(d, 1, 5);
    FAIL() << "expected the injected crash";
  } catch (const Error& e) {
    EXPECT_EQ(e.message(), "rank 1: injected crash at step 5 (debug.crash_rank/crash_step)");
  }
}

TEST(Faults, StallWaitsForTheFaultFlag) {
  reset_fault_state();
  DebugConfig d;
  d.stall_rank = 2;
  d.stall_step = 3;
  EXPECT_NO_THROW(inject_faults_before_step(d, 2, 2));
  std::thread releaser([] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    signal_fault("the test's abort");
  });
  const auto start = std::chrono::steady_clock::now();
  std::string message;
  try {
    inject_faults_before_step(d, 2, 3);
  } catch (const Error& e) {
    message = e.message();
  }
  const double waited =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  releaser.join();
  EXPECT_GE(waited, 0.25);
  EXPECT_LT(waited, 5.0);
  EXPECT_EQ(message,
            "rank 2: injected stall at step 3 (debug.stall_rank/stall_step); stalled rank "
            "released by the job's abort: the test's abort");
  reset_fault_state();
}

}  // namespace
}  // namespace sy
