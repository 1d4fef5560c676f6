// plugin.cpp — the entry points of plugin.h that PyTorch's
// CUDAPluggableAllocator calls, over one process-wide memfit allocator.
//
// C++ only for what C cannot do here: throwing std::runtime_error, which
// PyTorch turns into a Python exception. The core stays C; this file uses only
// the public API. See allocator/CUDA.md for the contract with PyTorch.
#include "memfit/plugin.h"

#include <atomic>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <stdexcept>
#include <string>

namespace {

// The allocator, created on first use. Never destroyed: PyTorch frees
// tensors during interpreter shutdown, after static destructors would have
// run, and a freed allocator there would be a use-after-free. Both objects
// are constant-initialized, so the hooks work even from other static
// initializers.
std::atomic<mf_allocator *> g_allocator{nullptr};
std::mutex g_create_lock;
// Throws the running PyTorch's c10::OutOfMemoryError (memfit_plugin_set_oom_thrower).
std::atomic<memfit_oom_thrower> g_oom_thrower{nullptr};

// Printf into a std::string.
std::string format(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
std::string format(const char *fmt, ...) {
  char buf[512];
  va_list ap;
  va_start(ap, fmt);
  int n = std::vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  if (n < 0) return std::string("(unformattable message)");
  if (static_cast<size_t>(n) < sizeof buf) return std::string(buf, static_cast<size_t>(n));
  std::string out(static_cast<size_t>(n) + 1, '\0');
  va_start(ap, fmt);
  std::vsnprintf(&out[0], out.size(), fmt, ap);
  va_end(ap);
  out.resize(static_cast<size_t>(n));
  return out;
}

// Options given in code (memfit_plugin_configure), read after MEMFIT_CONF's.
std::mutex g_conf_lock;
std::string g_configured;

// The configuration: cuda, then MEMFIT_CONF, then memfit_plugin_configure's
// (later keys win in mf_options_parse, so "backend:virtual" in either
// replaces the default).
std::string plugin_conf() {
  std::string conf = "backend:cuda";
  const char *env = std::getenv("MEMFIT_CONF");
  if (env && *env) {
    conf += ',';
    conf += env;
  }
  std::lock_guard<std::mutex> lock(g_conf_lock);
  if (!g_configured.empty()) {
    conf += ',';
    conf += g_configured;
  }
  return conf;
}
// Where plugin_conf() comes from, for messages.
const char *const kConfSources = "backend:cuda, MEMFIT_CONF, memfit_plugin_configure";

// conf parsed into a fresh options table (the caller frees it), or nullptr
// with the parser's reason in *err.
mf_options *parse_conf(const std::string &conf, std::string *err) {
  mf_options *o = mf_options_new();
  if (!o) {
    *err = "out of host memory";
    return nullptr;
  }
  if (mf_options_parse(o, conf.c_str()) != MF_OK) {
    *err = mf_last_error();
    mf_options_free(o);
    return nullptr;
  }
  return o;
}

// The allocator, or nullptr with *why set. A failed creation is not
// remembered: the next call tries again (the user may fix MEMFIT_CONF, or the
// first call may have come before the CUDA driver was usable). Only the
// thread that fails sees the message, in *why and in its mf_last_error().
mf_allocator *get_allocator(std::string *why) {
  mf_allocator *a = g_allocator.load(std::memory_order_acquire);
  if (a) return a;
  std::lock_guard<std::mutex> lock(g_create_lock);
  a = g_allocator.load(std::memory_order_relaxed);
  if (a) return a;
  std::string conf = plugin_conf();
  mf_status st = mf_allocator_create(conf.c_str(), &a);
  if (st != MF_OK) {
    if (why)
      *why = format("memfit: cannot create the allocator (%s) from \"%s\" (%s): %s",
                    mf_status_name(st), conf.c_str(), kConfSources, mf_last_error());
    return nullptr;
  }
  g_allocator.store(a, std::memory_order_release);
  return a;
}

// The void hooks run inside PyTorch's deleters and hot paths, so their
// errors go to stderr, and only the first of each hook: one bad pointer in a
// loop must not flood the log.
struct once_flag_reporter {
  std::atomic<bool> done{false};
  void report(const std::string &msg) {
    if (done.exchange(true, std::memory_order_relaxed)) return;
    std::fprintf(stderr, "%s (further errors of this kind are not shown)\n", msg.c_str());
  }
};
// The message of this thread's last failed validate / plugin_allocator call.
thread_local std::string t_plugin_error;
void set_plugin_error(const char *msg) { t_plugin_error = msg; }

once_flag_reporter g_free_errors, g_record_errors, g_empty_errors;

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
  buf.resize(std::char_traits<char>::length(buf.c_str()));
  while (!buf.empty() && buf.back() == '\n') buf.pop_back();
  return buf;
}

// The report for this thread's OOM, whose headline is `headline` (its
// mf_last_error). mf_oom_report keeps only the allocator's latest OOM, which
// may be another thread's by now: then the device's current state is
// reported under this thread's headline instead.
std::string oom_message(mf_allocator *a, int device, const std::string &headline) {
  std::string report =
      fetch_text([a](char *b, size_t n, size_t *need) { return mf_oom_report(a, b, n, need); });
  if (report.compare(0, headline.size(), headline) == 0 &&
      (report.size() == headline.size() || report[headline.size()] == '\n'))
    return report;
  std::string state =
      fetch_text([a, device](char *b, size_t n, size_t *need) { return mf_memory_report(a, device, b, n, need); });
  size_t eol = state.find('\n');  // drop its own headline
  return eol == std::string::npos ? headline : headline + state.substr(eol);
}

}  // namespace

extern "C" {

MF_API void *memfit_malloc(size_t size, int device, void *stream) {
  std::string why;
  mf_allocator *a = get_allocator(&why);
  if (!a) throw std::runtime_error(why);
  int count = mf_allocator_device_count(a);
  if (device < 0 || device >= count)
    throw std::runtime_error(format("memfit: memfit_malloc: device %d out of range (the allocator has %d)",
                                    device, count));
  // Size 0 is passed through: the core gives it a unique block, because
  // PyTorch keys its bookkeeping on the returned pointer.
  void *p = mf_malloc(a, device, size, reinterpret_cast<uintptr_t>(stream));
  if (p) return p;
  // Copy before anything else can overwrite them; the status tells an OOM
  // from a driver error or a host allocation failure.
  mf_status status = mf_last_status();
  std::string err = mf_last_error();
  if (status == MF_ERR_OOM) {
    std::string msg = "CUDA out of memory. " + oom_message(a, device, err);
    if (memfit_oom_thrower thrower = g_oom_thrower.load(std::memory_order_acquire)) thrower(msg.c_str());
    throw std::runtime_error(msg);  // no thrower, or one that returned
  }
  if (status == MF_ERR_UNSUPPORTED) throw std::runtime_error(err);  // already starts with "memfit: "
  throw std::runtime_error(format("memfit: memfit_malloc of %zu bytes on device %d failed: %s", size,
                                  device, err.c_str()));
}

MF_API void memfit_free(void *ptr, size_t size, int device, void *stream) {
  // The core knows each block's size, device and stream from its pointer.
  (void)size;
  (void)device;
  (void)stream;
  if (!ptr) return;
  try {
    mf_allocator *a = g_allocator.load(std::memory_order_acquire);
    if (!a) {
      g_free_errors.report(format("memfit: memfit_free(%p): no memfit allocator exists, so memfit did not "
                                  "allocate this pointer; ignored",
                                  ptr));
      return;
    }
    if (mf_free(a, ptr) != MF_OK)
      g_free_errors.report(format("memfit: memfit_free(%p) ignored: %s", ptr, mf_last_error()));
  } catch (...) {
    // PyTorch calls this from a noexcept deleter: an exception would be
    // std::terminate. Only std::string allocation can throw here.
  }
}

MF_API void memfit_empty_cache(void) {
  try {
    // Nothing is cached before the first allocation: do not create the
    // allocator (and initialize CUDA) just to empty it.
    mf_allocator *a = g_allocator.load(std::memory_order_acquire);
    if (a && mf_empty_cache(a) != MF_OK)
      g_empty_errors.report(format("memfit: memfit_empty_cache: %s", mf_last_error()));
  } catch (...) {
  }
}

MF_API void memfit_record_stream(void *ptr, void *stream) {
  try {
    mf_allocator *a = g_allocator.load(std::memory_order_acquire);
    if (!a) {
      g_record_errors.report(format("memfit: memfit_record_stream(%p): no memfit allocator exists; ignored", ptr));
      return;
    }
    if (mf_record_stream(a, ptr, reinterpret_cast<uintptr_t>(stream)) != MF_OK)
      g_record_errors.report(format("memfit: memfit_record_stream(%p) ignored: %s", ptr, mf_last_error()));
  } catch (...) {
  }
}

MF_API void memfit_set_memory_fraction(double fraction, int device) {
  // A configuration call, rare and deliberate: every error is shown.
  try {
    if (!(fraction > 0.0 && fraction <= 1.0)) {  // also rejects NaN
      std::fprintf(stderr, "memfit: set_memory_fraction(%g, %d) ignored: the fraction must be in (0, 1]\n",
                   fraction, device);
      return;
    }
    std::string why;
    mf_allocator *a = get_allocator(&why);
    if (!a) {
      std::fprintf(stderr, "%s\n", why.c_str());
      return;
    }
    int count = mf_allocator_device_count(a);
    if (device < 0 || device >= count) {
      std::fprintf(stderr, "memfit: set_memory_fraction(%g, %d) ignored: device out of range (the allocator has %d)\n",
                   fraction, device, count);
      return;
    }
    mf_backend *b = mf_allocator_backend(a);
    uint64_t total = 0;
    if (!b || !b->ops->total_memory || b->ops->total_memory(b, device, &total) != MF_OK) {
      std::fprintf(stderr, "memfit: set_memory_fraction(%g, %d) ignored: total memory unknown: %s\n", fraction,
                   device, mf_last_error());
      return;
    }
    uint64_t capacity = static_cast<uint64_t>(fraction * static_cast<double>(total));
    if (capacity > total) capacity = total;  // double rounding near 1.0
    if (capacity == 0) capacity = 1;         // 0 would mean "the whole device"
    if (mf_set_capacity(a, device, capacity) != MF_OK)
      std::fprintf(stderr, "memfit: set_memory_fraction(%g, %d) failed: %s\n", fraction, device, mf_last_error());
  } catch (...) {
  }
}

MF_API mf_allocator *memfit_plugin_allocator(void) {
  try {
    std::string why;
    mf_allocator *a = get_allocator(&why);
    if (!a) set_plugin_error(why.c_str());  // on failure mf_last_error() says why
    return a;
  } catch (...) {
    return nullptr;
  }
}

MF_API mf_allocator *memfit_plugin_allocator_if_created(void) {
  return g_allocator.load(std::memory_order_acquire);
}

MF_API int memfit_plugin_validate(void) {
  try {
    if (g_allocator.load(std::memory_order_acquire)) return 0;
    std::string conf = plugin_conf(), err;
    mf_options *o = parse_conf(conf, &err);
    if (!o) {
      set_plugin_error(format("memfit: bad options \"%s\" (%s): %s", conf.c_str(), kConfSources, err.c_str()).c_str());
      return 1;
    }
    char backend[32] = "";
    mf_options_get(o, "backend", backend, sizeof backend);
    mf_options_free(o);
    if (std::string(backend) == "cuda" && mf_backend_cuda_probe() != MF_OK) {
      set_plugin_error(format("memfit: %s", mf_last_error()).c_str());
      return 1;
    }
    return 0;
  } catch (...) {
    return 1;
  }
}

MF_API int memfit_plugin_configure(const char *conf) {
  try {
    std::lock_guard<std::mutex> create(g_create_lock); // no creation may read the options meanwhile
    if (g_allocator.load(std::memory_order_acquire)) {
      set_plugin_error("memfit: the plugin's allocator exists already (the first CUDA allocation created it): "
                       "configure it before");
      return 1;
    }
    std::string text = conf ? conf : "", err;
    mf_options *o = parse_conf(text, &err);
    if (!o) {
      set_plugin_error(format("memfit: bad options \"%s\" (memfit_plugin_configure): %s", text.c_str(), err.c_str()).c_str());
      return 1;
    }
    mf_options_free(o);
    std::lock_guard<std::mutex> lock(g_conf_lock);
    g_configured = text;
    return 0;
  } catch (...) {
    set_plugin_error("memfit: out of host memory");
    return 1;
  }
}

MF_API int memfit_plugin_option(const char *key, char *buf, size_t len) {
  try {
    mf_allocator *a = g_allocator.load(std::memory_order_acquire);
    if (a) {
      if (mf_options_get(mf_allocator_options(a), key, buf, len) == MF_OK) return 0;
      set_plugin_error(format("memfit: %s", mf_last_error()).c_str());
      return 1;
    }
    std::string conf = plugin_conf(), err;
    mf_options *o = parse_conf(conf, &err);
    mf_status st = o ? mf_options_get(o, key, buf, len) : MF_ERR_INVALID;
    if (o && st != MF_OK) err = mf_last_error();
    mf_options_free(o);
    if (st != MF_OK) {
      set_plugin_error(format("memfit: options \"%s\" (%s): %s", conf.c_str(), kConfSources, err.c_str()).c_str());
      return 1;
    }
    return 0;
  } catch (...) {
    set_plugin_error("memfit: out of host memory");
    return 1;
  }
}

MF_API const char *memfit_plugin_last_error(void) { return t_plugin_error.c_str(); }

MF_API void memfit_plugin_set_oom_thrower(memfit_oom_thrower thrower) {
  g_oom_thrower.store(thrower, std::memory_order_release);
}

}  // extern "C"
