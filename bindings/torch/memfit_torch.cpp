// memfit_torch.cpp — libmemfit_torch.so: a c10::Allocator over a memfit allocator
// (host backend), installed as PyTorch's CPU allocator with c10::SetCPUAllocator,
// so that CPU tensors live within memfit's simulated device budget; and the
// thrower that gives the CUDA plugin's OOMs PyTorch's own exception type.
#include "memfit/torch.h"

#include <array>
#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstring>
#include <mutex>
#include <string>
#include <utility>

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <c10/core/alignment.h>
#include <c10/util/Exception.h>

#ifndef MEMFIT_TORCH_BUILT_FOR
#error "MEMFIT_TORCH_BUILT_FOR (torch.__version__ at build time) must be defined by the build"
#endif

namespace {

// Beats the default CPU allocator (registered with 0). c10 keeps the highest
// priority seen and lets only an equal or higher one replace the allocator,
// so uninstall restores with the same priority; the lowest that wins is used
// so that another library can still install over memfit's after it.
constexpr uint8_t kPriority = 1;
constexpr int kSlots = 64;

// Each distinct mf_allocator gets a slot; the slot's adapter object and its
// deleter (one function per slot, from a template) are fixed for the life of
// the process. A DataPtr is {block, block, slot deleter}: its context is the
// block itself, so c10 sees a "simple" data pointer (raw_deleter, copy-on-write
// lazy clones work), and the deleter knows the allocator from its slot. Tensors
// therefore free into their own allocator after an uninstall or a reinstall.
struct Slot {
  std::atomic<mf_allocator *> alloc{nullptr};
  std::atomic<int> device{0};
  std::atomic<int64_t> live{0};  // DataPtrs handed out and not yet deleted
};
// Trivially destructible: nothing here is torn down at exit, when PyTorch may
// still free tensors.
Slot g_slots[kSlots];

thread_local std::string t_error;

int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
int fail(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  t_error = buf;
  return 1;
}

// Frees run inside PyTorch's deleters, where nothing can be thrown: the first
// error goes to stderr, the rest are dropped (one bad pointer in a loop must
// not flood the log).
std::atomic<bool> g_free_error_shown{false};

// Text from a (buf, len, needed) function of the core, grown to fit.
template <typename Fill>
std::string fetch_text(Fill fill) {
  std::string buf(4096, '\0');
  size_t needed = 0;
  if (fill(&buf[0], buf.size(), &needed) != MF_OK) return std::string();
  if (needed > buf.size()) {
    buf.assign(needed, '\0');
    if (fill(&buf[0], buf.size(), &needed) != MF_OK) return std::string();
  }
  buf.resize(std::strlen(buf.c_str()));
  while (!buf.empty() && buf.back() == '\n') buf.pop_back();
  return buf;
}

// memfit's report of this thread's OOM, whose headline is `headline`.
// mf_oom_report keeps the allocator's latest OOM only, which may be another
// thread's by now: then the device's current state goes under this headline.
std::string oom_report(mf_allocator *a, int device, const std::string &headline) {
  std::string report =
      fetch_text([a](char *b, size_t n, size_t *need) { return mf_oom_report(a, b, n, need); });
  if (report.compare(0, headline.size(), headline) == 0 &&
      (report.size() == headline.size() || report[headline.size()] == '\n'))
    return report;
  std::string state = fetch_text(
      [a, device](char *b, size_t n, size_t *need) { return mf_memory_report(a, device, b, n, need); });
  size_t eol = state.find('\n');  // drop its own headline
  return eol == std::string::npos ? headline : headline + state.substr(eol);
}

// "32.00 MiB", as memfit's reports write sizes.
std::string format_size(uint64_t bytes) {
  static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB"};
  double v = static_cast<double>(bytes);
  int u = 0;
  while (v >= 1024.0 && u < 5) {
    v /= 1024.0;
    u++;
  }
  char buf[32];
  if (u == 0) std::snprintf(buf, sizeof buf, "%llu B", static_cast<unsigned long long>(bytes));
  else std::snprintf(buf, sizeof buf, "%.2f %s", v, units[u]);
  return buf;
}

// For torch.profiler(profile_memory=True), as c10's default CPU allocator does.
void report_to_profiler(mf_allocator *a, int device, void *ptr, int64_t delta) {
  mf_stats st;
  std::memset(&st, 0, sizeof st);
  mf_get_stats(a, device, &st);
  c10::reportMemoryUsageToProfiler(ptr, delta, static_cast<size_t>(st.allocated_bytes.current),
                                   static_cast<size_t>(st.reserved_bytes.current),
                                   c10::Device(c10::DeviceType::CPU));
}

void free_block(int slot, void *ptr) noexcept {
  if (!ptr) return;  // a 0-byte allocation
  Slot &s = g_slots[slot];
  mf_allocator *a = s.alloc.load(std::memory_order_acquire);
  try {
    if (c10::memoryProfilingEnabled()) {
      size_t size = 0;
      int device = mf_device_of(a, ptr);
      if (device >= 0 && mf_block_info(a, ptr, nullptr, nullptr, &size) == MF_OK)
        report_to_profiler(a, device, ptr, -static_cast<int64_t>(size));
    }
  } catch (...) {
    // The profiler's bookkeeping must not keep the block alive.
  }
  if (mf_free(a, ptr) != MF_OK) {
    if (!g_free_error_shown.exchange(true, std::memory_order_relaxed))
      std::fprintf(stderr, "memfit: freeing CPU tensor memory %p failed: %s (further errors of this kind are not shown)\n",
                   ptr, mf_last_error());
  }
  s.live.fetch_sub(1, std::memory_order_release);
}

template <size_t I>
void free_in_slot(void *ptr) {
  free_block(static_cast<int>(I), ptr);
}

template <size_t... I>
constexpr std::array<c10::DeleterFnPtr, sizeof...(I)> make_deleters(std::index_sequence<I...>) {
  return {{&free_in_slot<I>...}};
}
constexpr std::array<c10::DeleterFnPtr, kSlots> kDeleters = make_deleters(std::make_index_sequence<kSlots>{});

[[noreturn]] void throw_failure(mf_allocator *a, int device, size_t n) {
  // Copy before anything else can overwrite them.
  mf_status status = mf_last_status();
  std::string err = mf_last_error();
  if (status == MF_ERR_OOM) {
    try {
      if (c10::memoryProfilingEnabled()) {
        mf_stats st;
        std::memset(&st, 0, sizeof st);
        mf_get_stats(a, device, &st);
        c10::reportOutOfMemoryToProfiler(static_cast<int64_t>(n), static_cast<size_t>(st.allocated_bytes.current),
                                         static_cast<size_t>(st.reserved_bytes.current),
                                         c10::Device(c10::DeviceType::CPU));
      }
    } catch (...) {
    }
    // The first line is what trial-based batch-size finders look for in a
    // RuntimeError with one argument: " out of memory." (Accelerate's
    // should_reduce_batch_size, as in PyTorch's "CUDA out of memory.") and
    // "DefaultCPUAllocator: can't allocate memory" (PyTorch's own CPU OOM:
    // Accelerate, and Lightning's is_oom_error for CPU); memfit's report follows,
    // its headline the first line that says "tried to allocate" (memfit's CLI
    // prints that one).
    uint64_t capacity = mf_capacity(a, device);
    TORCH_CHECK_WITH(OutOfMemoryError, false, "memfit: CPU out of memory. Tried to allocate ", format_size(n), " (", n,
                     " bytes), which did not fit ",
                     capacity ? "memfit's capacity of " + format_size(capacity) : std::string("the host"),
                     " (CPU tensors are served by memfit: device ", device, " of a ",
                     mf_allocator_backend(a)->ops->name,
                     " allocator; in the words of PyTorch's own CPU allocator, DefaultCPUAllocator: can't allocate "
                     "memory).\n",
                     oom_report(a, device, err));
  }
  TORCH_CHECK(false, "memfit: CPU allocation of ", n, " bytes on device ", device, " failed (",
              mf_status_name(status), "): ", err);
}

class Adapter final : public c10::Allocator {
 public:
  explicit Adapter(int slot) : slot_(slot), deleter_(kDeleters[static_cast<size_t>(slot)]) {}

  c10::DataPtr allocate(size_t n) override {
    const c10::Device cpu(c10::DeviceType::CPU);
    // As c10's default CPU allocator: no memory for 0 bytes.
    if (n == 0) return {nullptr, nullptr, deleter_, cpu};
    Slot &s = g_slots[slot_];
    mf_allocator *a = s.alloc.load(std::memory_order_acquire);
    int device = s.device.load(std::memory_order_relaxed);
    void *p = mf_malloc(a, device, n, 0);
    if (C10_UNLIKELY(!p)) throw_failure(a, device, n);
    s.live.fetch_add(1, std::memory_order_relaxed);
    c10::DataPtr dp(p, p, deleter_, cpu);  // owns the block from here on
    // memfit's blocks are 512-byte multiples within page-aligned segments.
    TORCH_INTERNAL_ASSERT(reinterpret_cast<uintptr_t>(p) % c10::gAlignment == 0, "memfit: block ", p,
                          " is not aligned to ", c10::gAlignment, " bytes");
    if (C10_UNLIKELY(c10::memoryProfilingEnabled())) {
      size_t size = 0;
      if (mf_block_info(a, p, nullptr, nullptr, &size) == MF_OK)
        report_to_profiler(a, device, p, static_cast<int64_t>(size));
    }
    return dp;
  }

  c10::DeleterFnPtr raw_deleter() const override { return deleter_; }

  void copy_data(void *dest, const void *src, std::size_t count) const override {
    default_copy_data(dest, src, count);
  }

 private:
  int slot_;
  c10::DeleterFnPtr deleter_;
};

std::mutex g_lock;                    // install / uninstall
Adapter *g_adapters[kSlots];          // created on first use, never destroyed
std::atomic<int> g_current{-1};       // the installed slot, -1 when not installed
c10::Allocator *g_previous = nullptr; // what the first install replaced

// The slot of `a`: its own, else a never-used one, else one whose allocator
// has no live tensors left and is not the installed one. -1 when all are taken.
int pick_slot(mf_allocator *a) {
  for (int i = 0; i < kSlots; i++)
    if (g_slots[i].alloc.load(std::memory_order_relaxed) == a) return i;
  for (int i = 0; i < kSlots; i++)
    if (!g_slots[i].alloc.load(std::memory_order_relaxed)) return i;
  for (int i = 0; i < kSlots; i++)
    if (i != g_current.load(std::memory_order_relaxed) && g_slots[i].live.load(std::memory_order_acquire) == 0)
      return i;
  return -1;
}

}  // namespace

extern "C" {

MEMFIT_TORCH_API int memfit_torch_cpu_install(mf_allocator *a, int device) {
  if (!a) return fail("memfit_torch_cpu_install: NULL allocator");
  int count = mf_allocator_device_count(a);
  if (device < 0 || device >= count)
    return fail("memfit_torch_cpu_install: device %d out of range (the allocator has %d)", device, count);
  mf_backend *backend = mf_allocator_backend(a);
  const char *name = backend && backend->ops && backend->ops->name ? backend->ops->name : "?";
  if (std::strcmp(name, "virtual") == 0 || std::strcmp(name, "cuda") == 0)
    return fail("memfit_torch_cpu_install: the allocator's backend is \"%s\", whose addresses the CPU cannot use; "
                "create it with backend:host",
                name);
  try {
    std::lock_guard<std::mutex> lock(g_lock);
    int slot = pick_slot(a);
    if (slot < 0)
      return fail("memfit_torch_cpu_install: %d memfit allocators already have live CPU tensors; free them first",
                  kSlots);
    if (!g_adapters[slot]) g_adapters[slot] = new Adapter(slot);
    Slot &s = g_slots[slot];
    s.device.store(device, std::memory_order_relaxed);
    s.alloc.store(a, std::memory_order_release);
    c10::Allocator *before = c10::GetCPUAllocator();
    c10::SetCPUAllocator(g_adapters[slot], kPriority);
    if (c10::GetCPUAllocator() != g_adapters[slot])
      return fail("memfit_torch_cpu_install: PyTorch kept its CPU allocator (%p): one was installed with a priority "
                  "above memfit's (%u)",
                  static_cast<void *>(before), static_cast<unsigned>(kPriority));
    if (g_current.load(std::memory_order_relaxed) < 0) g_previous = before;
    g_current.store(slot, std::memory_order_release);
    return 0;
  } catch (const std::exception &e) {
    return fail("memfit_torch_cpu_install: %s", e.what());
  }
}

MEMFIT_TORCH_API int memfit_torch_cpu_uninstall(void) {
  try {
    std::lock_guard<std::mutex> lock(g_lock);
    int slot = g_current.load(std::memory_order_relaxed);
    if (slot < 0) return fail("memfit_torch_cpu_uninstall: memfit is not installed as the CPU allocator");
    g_current.store(-1, std::memory_order_release);
    c10::Allocator *now = c10::GetCPUAllocator();
    if (now != g_adapters[slot])
      return fail("memfit_torch_cpu_uninstall: another allocator (%p) has replaced memfit's since it was installed; "
                  "it is left in place",
                  static_cast<void *>(now));
    c10::SetCPUAllocator(g_previous, kPriority);
    if (c10::GetCPUAllocator() != g_previous)
      return fail("memfit_torch_cpu_uninstall: PyTorch did not take back its CPU allocator (%p)",
                  static_cast<void *>(g_previous));
    g_previous = nullptr;
    return 0;
  } catch (const std::exception &e) {
    return fail("memfit_torch_cpu_uninstall: %s", e.what());
  }
}

MEMFIT_TORCH_API int memfit_torch_cpu_installed(void) {
  return g_current.load(std::memory_order_acquire) >= 0 ? 1 : 0;
}

MEMFIT_TORCH_API const char *memfit_torch_last_error(void) { return t_error.c_str(); }

MEMFIT_TORCH_API const char *memfit_torch_built_for(void) { return MEMFIT_TORCH_BUILT_FOR; }

MEMFIT_TORCH_API void memfit_torch_throw_oom(const char *message) {
  // PyTorch's Python bindings turn this type into torch.OutOfMemoryError
  // (torch.cuda.OutOfMemoryError is the same class), and cuDNN's workspace
  // fallback catches it; the message is memfit's whole report.
  TORCH_CHECK_WITH(OutOfMemoryError, false, message ? message : "CUDA out of memory.");
}

}  // extern "C"
