/* baseline.h — the allocators memfit is timed against on the same trace:
 * glibc's malloc (the process's own malloc/free) and jemalloc, loaded at run
 * time so that this executable never links it and "malloc" stays glibc's. */
#ifndef MEMFIT_REPLAY_BASELINE_H
#define MEMFIT_REPLAY_BASELINE_H

#include <stddef.h>

typedef struct baseline {
  const char *name; /* "malloc" or "jemalloc" */
  void *(*malloc_fn)(size_t);
  void (*free_fn)(void *);
  void *handle;         /* dlopen handle (jemalloc), NULL for malloc */
  char library[512];    /* the file malloc_fn comes from (dladdr), for the results */
} baseline;

/* Open the baseline called name. Returns 0, or -1 with a message in err
 * (unknown name, libjemalloc.so.2 missing). */
int baseline_open(const char *name, baseline *b, char *err, size_t errlen);
void baseline_close(baseline *b);

/* Debian's libjemalloc.so.2 keeps 2.6 KiB of initial-exec TLS, more than the
 * static TLS glibc leaves for libraries dlopen'ed after start-up, so its
 * dlopen fails with "cannot allocate memory in static TLS block". glibc
 * (>= 2.32) reserves more when the tunable glibc.rtld.optional_static_tls is
 * set, but reads it only at start-up: this restarts the program once with it
 * set (and MEMFIT_REPLAY_STATIC_TLS=1 to stop a loop). Returns only if the
 * restart was already done or failed. */
void baseline_restart_with_static_tls(char **argv);

#endif /* MEMFIT_REPLAY_BASELINE_H */
