// Protecting a run folder (train.out_dir) before `switchyard train` writes into it
// (docs/checkpoints.md#run-folders).
//
// Note [Run folders]: a train command owns its out_dir for as long as it runs. World rank 0, once,
// before anything is loaded (apps/launch.cpp broadcasts its verdict, so every rank of an mpirun
// job ends with the same line):
//   - an out_dir inside a checkpoint (a step_<N> folder under a `checkpoints` folder, or any
//     folder holding a manifest.json) is refused: checkpoint rotation would delete the run;
//   - the lock <out_dir>/.lock (this host and pid) is taken, exclusively: a second job on the
//     same folder ends at once naming the holder; a lock whose pid no longer runs on this host is
//     stale and taken over (with a log line); the lock goes when the job ends, on every path;
//   - without --resume, a folder that already holds a run (config.yaml, metrics.jsonl,
//     summary.json, model.pt or a non-empty checkpoints/) is refused, naming `--resume auto` and
//     `--overwrite`; with --overwrite the earlier run's files go before this run writes its
//     first file, so that rotation never keeps its newer checkpoints and `--resume auto` never
//     continues it, but only once the data, the model and train.init_from have loaded
//     (RunFolderLock::clear_earlier_run(), which the trainer calls): a run that fails before
//     that (a data file that is missing or holds other tokens, say) leaves the earlier run whole.
//     A config.yaml alone that is this run's own config (a sweep writes it before starting the
//     run) is not a run.
// The default out_dir is runs/<stem of the last --config file> (runs/default without one), and
// `~` at its start is $HOME.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "config/config.h"

namespace sy {

// train.out_dir as the train command uses it: runs/<stem of the last of `config_files`> when
// neither a file nor an override in `sets` sets it (runs/default without files), then a leading
// `~` expanded (files.h: expand_home).
void resolve_out_dir(Config& config, const std::vector<std::string>& config_files,
                     const std::vector<std::string>& sets);

// The lock of one run folder, held by this process until destroyed (Note [Run folders]).
class RunFolderLock {
 public:
  // Takes <dir>/.lock or throws naming the folder and the holder. `created_dir`: this job made
  // `dir`, and removes it again on release if it is still empty.
  RunFolderLock(const std::string& dir, bool created_dir);
  ~RunFolderLock();
  RunFolderLock(const RunFolderLock&) = delete;
  RunFolderLock& operator=(const RunFolderLock&) = delete;

  const std::string& path() const { return path_; }

  // --overwrite: the earlier run's files (`what` names them in the log line) are removed by
  // clear_earlier_run(), called once this run is ready to write; without a call, they stay.
  void set_earlier_run(std::vector<std::string> what) { earlier_ = std::move(what); }
  void clear_earlier_run();

 private:
  std::string dir_, path_, content_;
  bool created_dir_ = false;
  std::vector<std::string> earlier_;  // the earlier run's files still to remove; empty: none
};

// Rank 0's checks and preparation of config.train.out_dir (Note [Run folders]); `resume` is the
// --resume argument ("" without), `overwrite` the --overwrite flag. Returns the held lock.
std::unique_ptr<RunFolderLock> claim_run_folder(const Config& config, const std::string& resume,
                                                bool overwrite);

}  // namespace sy
