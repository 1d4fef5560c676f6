/* debug.c — the failure of a debug assert (MEMFIT_DEBUG >= 1, internal.h):
 * a broken invariant of memfit's own, printed with where it broke, then abort.
 * Built into every library so a debug and a release object can be mixed. */
#include <stdio.h>
#include <stdlib.h>

#include "internal.h"

void _mf_debug_fail(const char *what, const char *file, int line, long long value) {
  fprintf(stderr, "memfit: debug assert failed at %s:%d: %s (value %lld); this is a bug in memfit\n", file, line,
          what, value);
  fflush(stderr);
  abort();
}
