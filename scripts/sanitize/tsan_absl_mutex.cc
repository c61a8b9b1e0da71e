// ThreadSanitizer cannot see absl::Mutex: Debian's abseil is not built with
// TSan, so its lock and unlock are invisible and every access our code makes
// under such a lock would look like a race. scripts/sanitize.sh preloads this
// library into the TSan test runs. It interposes the absl::Mutex calls that
// come from the test executable itself (the project's code is linked into
// it statically) and tells TSan about them with its mutex annotations; calls
// from gRPC and other libraries pass through untouched, since TSan does not
// see their memory accesses either.
#include <dlfcn.h>
#include <link.h>
#include <sanitizer/tsan_interface.h>

#include <cstdint>
#include <cstdlib>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace {

uintptr_t main_begin = 0;
uintptr_t main_end = 0;

// The main executable's loaded range: the first object dl_iterate_phdr lists.
__attribute__((constructor)) void FindMainProgram() {
  dl_iterate_phdr(
      [](dl_phdr_info* info, size_t, void*) -> int {
        for (int i = 0; i < info->dlpi_phnum; ++i) {
          const ElfW(Phdr)& ph = info->dlpi_phdr[i];
          if (ph.p_type != PT_LOAD) continue;
          const uintptr_t begin = info->dlpi_addr + ph.p_vaddr;
          const uintptr_t end = begin + ph.p_memsz;
          if (main_begin == 0 || begin < main_begin) main_begin = begin;
          if (end > main_end) main_end = end;
        }
        return 1;  // only the first object, the program itself
      },
      nullptr);
}

bool FromMain(void* return_address) {
  const auto a = reinterpret_cast<uintptr_t>(return_address);
  return a >= main_begin && a < main_end;
}

template <typename F>
F Real(const char* symbol) {
  void* f = dlsym(RTLD_NEXT, symbol);
  if (f == nullptr) std::abort();
  return reinterpret_cast<F>(f);
}

using Plain = void (*)(absl::Mutex*);
using Try = bool (*)(absl::Mutex*);
using Wait = void (*)(absl::Mutex*, const absl::Condition&);
using WaitFor = bool (*)(absl::Mutex*, const absl::Condition&, absl::Duration);
using WaitUntil = bool (*)(absl::Mutex*, const absl::Condition&, absl::Time);

void Locked(absl::Mutex* mu, unsigned flags) {
  __tsan_mutex_pre_lock(mu, flags);
  __tsan_mutex_post_lock(mu, flags, 0);
}

void Unlocked(absl::Mutex* mu, unsigned flags) {
  __tsan_mutex_pre_unlock(mu, flags);
  __tsan_mutex_post_unlock(mu, flags);
}

// The condition of an Await, evaluated by abseil with the lock held (by the
// waiting thread, or by the one unlocking): TSan is told so around it.
struct Guarded {
  absl::Mutex* mu;
  const absl::Condition* cond;
};

bool EvalGuarded(Guarded* g) {
  Locked(g->mu, 0);
  const bool met = g->cond->Eval();
  Unlocked(g->mu, 0);
  return met;
}

// An Await releases and retakes the lock inside abseil: TSan is told the
// caller let go before and took it again after.
template <typename F, typename... Args>
auto Awaiting(absl::Mutex* mu, void* from, F real, const absl::Condition& cond, Args... args) {
  if (!FromMain(from)) return real(mu, cond, args...);
  Guarded guarded{mu, &cond};
  const absl::Condition annotated(&EvalGuarded, &guarded);
  Unlocked(mu, 0);
  struct Relock {  // also when real() returns void
    absl::Mutex* mu;
    ~Relock() { Locked(mu, 0); }
  } relock{mu};
  return real(mu, annotated, args...);
}

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

void Mutex::Lock() {
  static const Plain real = Real<Plain>("_ZN4absl7debian35Mutex4LockEv");
  real(this);
  if (FromMain(__builtin_return_address(0))) Locked(this, 0);
}

void Mutex::Unlock() {
  static const Plain real = Real<Plain>("_ZN4absl7debian35Mutex6UnlockEv");
  if (FromMain(__builtin_return_address(0))) Unlocked(this, 0);
  real(this);
}

bool Mutex::TryLock() {
  static const Try real = Real<Try>("_ZN4absl7debian35Mutex7TryLockEv");
  const bool locked = real(this);
  if (locked && FromMain(__builtin_return_address(0))) Locked(this, __tsan_mutex_try_lock);
  return locked;
}

void Mutex::ReaderLock() {
  static const Plain real = Real<Plain>("_ZN4absl7debian35Mutex10ReaderLockEv");
  real(this);
  if (FromMain(__builtin_return_address(0))) Locked(this, __tsan_mutex_read_lock);
}

void Mutex::ReaderUnlock() {
  static const Plain real = Real<Plain>("_ZN4absl7debian35Mutex12ReaderUnlockEv");
  if (FromMain(__builtin_return_address(0))) Unlocked(this, __tsan_mutex_read_lock);
  real(this);
}

void Mutex::Await(const Condition& cond) {
  static const Wait real = Real<Wait>("_ZN4absl7debian35Mutex5AwaitERKNS0_9ConditionE");
  Awaiting(this, __builtin_return_address(0), real, cond);
}

bool Mutex::AwaitWithTimeout(const Condition& cond, absl::Duration timeout) {
  static const WaitFor real = Real<WaitFor>(
      "_ZN4absl7debian35Mutex16AwaitWithTimeoutERKNS0_9ConditionENS0_8DurationE");
  return Awaiting(this, __builtin_return_address(0), real, cond, timeout);
}

bool Mutex::AwaitWithDeadline(const Condition& cond, absl::Time deadline) {
  static const WaitUntil real = Real<WaitUntil>(
      "_ZN4absl7debian35Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  return Awaiting(this, __builtin_return_address(0), real, cond, deadline);
}

void Mutex::LockWhen(const Condition& cond) {
  static const Wait real = Real<Wait>("_ZN4absl7debian35Mutex8LockWhenERKNS0_9ConditionE");
  if (!FromMain(__builtin_return_address(0))) return real(this, cond);
  Guarded guarded{this, &cond};
  real(this, Condition(&EvalGuarded, &guarded));
  Locked(this, 0);
}

ABSL_NAMESPACE_END
}  // namespace absl
