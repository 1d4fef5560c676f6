/* baseline.c — resolves the baseline allocators' malloc and free. jemalloc is
 * dlopen'ed RTLD_LOCAL and its symbols taken from that handle only, so it
 * serves just the baseline loop and never replaces the process's malloc. */
#include "baseline.h"

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Where a function lives, e.g. "/lib/x86_64-linux-gnu/libc.so.6": proves
 * which allocator a baseline really ran (an LD_PRELOAD would show here). */
static void locate(void *fn, char *out, size_t len) {
  Dl_info info;
  if (dladdr(fn, &info) && info.dli_fname) snprintf(out, len, "%s", info.dli_fname);
  else snprintf(out, len, "unknown");
}

int baseline_open(const char *name, baseline *b, char *err, size_t errlen) {
  memset(b, 0, sizeof *b);
  if (strcmp(name, "malloc") == 0) {
    b->name = "malloc";
    /* Through pointers, as for jemalloc, so both loops pay the same call and
     * the compiler cannot pair up or elide malloc/free. */
    b->malloc_fn = malloc;
    b->free_fn = free;
    void *fn;
    memcpy(&fn, &b->malloc_fn, sizeof fn);
    locate(fn, b->library, sizeof b->library);
    return 0;
  }
  if (strcmp(name, "jemalloc") == 0) {
    void *h = dlopen("libjemalloc.so.2", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
      snprintf(err, errlen,
               "--baseline jemalloc: cannot load libjemalloc.so.2 (%s); install jemalloc "
               "(Debian: apt-get install libjemalloc2)",
               dlerror());
      return -1;
    }
    /* POSIX lets a dlsym'd function pointer pass through void *. */
    void *m = dlsym(h, "malloc");
    void *f = dlsym(h, "free");
    if (!m || !f) {
      snprintf(err, errlen, "--baseline jemalloc: libjemalloc.so.2 has no malloc/free symbols");
      dlclose(h);
      return -1;
    }
    b->name = "jemalloc";
    b->handle = h;
    memcpy(&b->malloc_fn, &m, sizeof m);
    memcpy(&b->free_fn, &f, sizeof f);
    locate(m, b->library, sizeof b->library);
    return 0;
  }
  snprintf(err, errlen, "unknown baseline '%s' (expected malloc or jemalloc)", name);
  return -1;
}

void baseline_close(baseline *b) {
  /* jemalloc is not unloaded: its background state (arenas, TSD destructors)
   * outlives any dlclose safely only if it stays mapped. */
  b->handle = NULL;
}

void baseline_restart_with_static_tls(char **argv) {
  if (getenv("MEMFIT_REPLAY_STATIC_TLS")) return;
  /* Keep the user's tunables; ours goes last, so it wins. */
  static const char ours[] = "glibc.rtld.optional_static_tls=65536";
  const char *old = getenv("GLIBC_TUNABLES");
  size_t len = (old ? strlen(old) + 1 : 0) + sizeof ours;
  char *tunables = malloc(len);
  if (!tunables) return;
  snprintf(tunables, len, "%s%s%s", old ? old : "", old ? ":" : "", ours);
  if (setenv("GLIBC_TUNABLES", tunables, 1) == 0 && setenv("MEMFIT_REPLAY_STATIC_TLS", "1", 1) == 0)
    execv("/proc/self/exe", argv);
  free(tunables); /* the restart failed: go on, and let dlopen say why */
}
