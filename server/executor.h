// A fixed pool of worker threads for the heavy part of requests (casts and
// large copies), so that gRPC's callback threads never block on them.
// Thread-safe. The destructor finishes queued work, then joins.
#ifndef ASARRAY_SERVER_EXECUTOR_H_
#define ASARRAY_SERVER_EXECUTOR_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace asarray::server {

class Executor {
 public:
  explicit Executor(int threads);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  void Schedule(std::function<void()> work);

 private:
  void Loop();

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_EXECUTOR_H_
