// oom_type_check.cpp — a ctest program: memfit's CUDA plugin entry point
// memfit_malloc throws std::runtime_error on an OOM by default, and the
// running PyTorch's c10::OutOfMemoryError once libmemfit_torch.so's thrower is
// registered (what memfit.install(device="cuda") does), which is the type
// PyTorch's bindings raise as torch.OutOfMemoryError; both messages say what
// trial-based batch-size finders look for (Accelerate's
// should_reduce_batch_size: " out of memory."; Lightning's is_oom_error:
// "CUDA" and "out of memory"). Runs on any machine: the plugin is pointed at
// the virtual backend through MEMFIT_CONF. `memfit_oom_type_check FILE` also
// writes the OutOfMemoryError's message to FILE (tests/python/test_trial_finders.py).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include <c10/util/Exception.h>

#include "memfit/plugin.h"
#include "memfit/torch.h"

static int failures = 0;
static void expect(bool ok, const char *what) {
  if (!ok) {
    std::fprintf(stderr, "FAILED: %s\n", what);
    failures++;
  }
}

static bool starts_with(const std::string &s, const char *prefix) { return s.rfind(prefix, 0) == 0; }

static bool finders_see_an_oom(const std::string &s) {
  return s.find(" out of memory.") != std::string::npos && s.find("CUDA") != std::string::npos;
}

int main(int argc, char **argv) {
  // Bad options fail validation with the reason, and create nothing.
  setenv("MEMFIT_CONF", "backend:virtual,capacty:64MiB", 1);
  expect(memfit_plugin_validate() != 0, "a misspelt key fails validation");
  expect(std::strstr(memfit_plugin_last_error(), "capacty") != nullptr, "the message names the bad key");
  expect(memfit_plugin_allocator_if_created() == nullptr, "a failed validation creates no allocator");

  setenv("MEMFIT_CONF", "backend:virtual,capacity:64MiB", 1);
  expect(memfit_plugin_validate() == 0, "the options validate");
  expect(memfit_plugin_allocator_if_created() == nullptr, "validate creates no allocator");
  void *p = memfit_malloc(4096, 0, nullptr);
  expect(p != nullptr, "a small allocation succeeds");
  expect(memfit_plugin_allocator_if_created() != nullptr, "the first allocation creates the allocator");

  // Without a thrower: std::runtime_error, and not PyTorch's type.
  try {
    memfit_malloc(128u << 20, 0, nullptr);
    expect(false, "an allocation over the capacity throws");
  } catch (const c10::OutOfMemoryError &) {
    expect(false, "no thrower registered, yet c10::OutOfMemoryError");
  } catch (const std::runtime_error &e) {
    expect(starts_with(e.what(), "CUDA out of memory."), "the runtime_error starts with \"CUDA out of memory.\"");
    expect(finders_see_an_oom(e.what()), "the runtime_error says \" out of memory.\" and \"CUDA\"");
  }

  // With libmemfit_torch.so's thrower: c10::OutOfMemoryError carrying memfit's report.
  memfit_plugin_set_oom_thrower(memfit_torch_throw_oom);
  try {
    memfit_malloc(128u << 20, 0, nullptr);
    expect(false, "an allocation over the capacity throws");
  } catch (const c10::OutOfMemoryError &e) {
    std::string msg = e.what_without_backtrace();
    expect(starts_with(msg, "CUDA out of memory."), "the OutOfMemoryError starts with \"CUDA out of memory.\"");
    expect(msg.find("capacity") != std::string::npos, "the message carries memfit's report (its capacity)");
    expect(finders_see_an_oom(msg), "the OutOfMemoryError says \" out of memory.\" and \"CUDA\"");
    if (argc > 1) {
      FILE *f = std::fopen(argv[1], "w");
      expect(f && std::fputs(msg.c_str(), f) >= 0 && std::fclose(f) == 0, "the message is written to the file");
    }
  } catch (...) {
    expect(false, "the thrower's type did not arrive");
  }

  // The allocator is still usable after both OOMs.
  void *q = memfit_malloc(4096, 0, nullptr);
  expect(q != nullptr, "allocation after an OOM succeeds");
  memfit_free(q, 4096, 0, nullptr);
  memfit_free(p, 4096, 0, nullptr);

  memfit_plugin_set_oom_thrower(nullptr);
  std::printf("%s\n", failures ? "oom_type_check: FAILED" : "oom_type_check: passed");
  return failures ? 1 : 0;
}
