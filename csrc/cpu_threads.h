// How the CPU kernels use threads: work groups taken dynamically, and no thread spinning for a late sibling.
//
// A pass splits its work into more contiguous groups than threads (n_groups); for_each_group runs them in ONE
// OpenMP region (at::parallel_for: the threads are torch's, and MKL inside runs single-threaded), each thread
// taking the next group when it finishes one. Whatever groups share goes to per-group buffers merged in group
// order by the caller, so the results do not depend on which thread ran which group (bit-identical run to run
// for a fixed thread count, which sets the groups).
//
// Why the care: libgomp's threads spin at a barrier before they sleep. When another process takes a core (a
// data-loader worker, the generator's step, another job: the normal case in training), a thread spinning at a
// barrier holds a core that its descheduled sibling needs, and every barrier costs a scheduler slice: with
// one busy process on a 2-core machine the fused loss ran up to 4x slower on 2 threads than on 1 when it used
// many short regions (a BLAS call and a row pass per tile). Here a pass is one region; the groups are taken
// dynamically (a descheduled thread leaves its share to the others); and a thread that runs out of groups
// sleeps on a condition variable (a futex: no spinning) until the last group is done, so that all threads
// reach the region's closing barrier together.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <mutex>
#include <utility>

namespace synthcl_fast {

// At most kGroupsPerThread groups per thread, fewer where the groups' buffers (buffer_bytes each) would take
// more than kGroupBytes in all (never fewer than 2 per thread), and none smaller than kMinGroupWork units of
// work (multiply-adds, or elements for a row pass): below that, waking a second thread costs more than it
// saves, and under contention much more (one group: the caller's thread alone, no parallel region).
constexpr int64_t kGroupsPerThread = 4;
constexpr int64_t kGroupBytes = int64_t(512) << 20;
constexpr int64_t kMinGroupWork = int64_t(1) << 22;

inline int64_t n_groups(int64_t n_items, int64_t buffer_bytes, int64_t work) {
  const int64_t threads = at::get_num_threads();
  const int64_t by_memory = buffer_bytes > 0 ? kGroupBytes / buffer_bytes : kGroupsPerThread * threads;
  const int64_t groups = std::clamp<int64_t>(by_memory, 2 * threads, kGroupsPerThread * threads);
  return std::max<int64_t>(1, std::min({groups, n_items, work / kMinGroupWork}));
}

// Item range [lo, hi) of group g when n_items are split into n_groups contiguous groups.
inline std::pair<int64_t, int64_t> group_range(int64_t g, int64_t n_groups, int64_t n_items) {
  return {g * n_items / n_groups, (g + 1) * n_items / n_groups};
}

// Runs work(g) for every group g in [0, n_groups), each group on one thread, the groups taken in order by the
// threads of one region as each finishes its last. The first exception is rethrown here (the groups not yet
// started are skipped).
template <typename F>
void for_each_group(int64_t n_groups, F work) {
  std::atomic<int64_t> next{0}, finished{0};
  std::atomic<bool> failed{false};
  std::exception_ptr error;
  std::mutex mutex;
  std::condition_variable all_done;
  at::parallel_for(0, std::min<int64_t>(at::get_num_threads(), n_groups), 1, [&](int64_t, int64_t) {
    for (int64_t g = next++; g < n_groups; g = next++) {
      if (!failed) {
        try {
          work(g);
        } catch (...) {
          std::lock_guard<std::mutex> lock(mutex);
          if (!error) error = std::current_exception();
          failed = true;
        }
      }
      if (++finished == n_groups) {
        std::lock_guard<std::mutex> lock(mutex);
        all_done.notify_all();
      }
    }
    std::unique_lock<std::mutex> lock(mutex);
    all_done.wait(lock, [&] { return finished.load() == n_groups; });
  });
  if (error) std::rethrow_exception(error);
}

// for_each_group over the items [0, n_items), each item `item_work` units of work: fn(lo, hi) per group.
template <typename F>
void parallel_items(int64_t n_items, int64_t item_work, F fn) {
  const int64_t groups = n_groups(n_items, 0, n_items * item_work);
  for_each_group(groups, [&](int64_t g) {
    const auto [lo, hi] = group_range(g, groups, n_items);
    if (lo < hi) fn(lo, hi);
  });
}

}  // namespace synthcl_fast
