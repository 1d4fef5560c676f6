/* main.c — a program of another project against an installed memfit: an
 * allocator on the virtual backend, a malloc that the stats and the checker
 * see, a free, then the planner's version and size parser. Prints the version
 * and the file libmemfit was loaded from (run_consumer.cmake checks that it is
 * the installed one). */
#define _GNU_SOURCE /* dladdr */
#include <dlfcn.h>
#include <stdio.h>
#include <string.h>

#include <memfit/memfit.h>
#include <memfit/plan.h>

#define EXPECT(cond)                                                            \
  do {                                                                          \
    if (!(cond)) {                                                              \
      fprintf(stderr, "memfit_consumer: %s failed (%s)\n", #cond, mf_last_error()); \
      return 1;                                                                 \
    }                                                                           \
  } while (0)

int main(void) {
  mf_allocator *a = NULL;
  EXPECT(mf_allocator_create("backend:virtual,capacity:64MiB", &a) == MF_OK);
  void *p = mf_malloc(a, 0, 1 << 20, 0);
  EXPECT(p != NULL);
  mf_stats stats = {.struct_size = sizeof stats, .version = MF_STATS_VERSION};
  EXPECT(mf_get_stats(a, 0, &stats) == MF_OK);
  EXPECT(stats.allocated_bytes.current >= 1 << 20);
  EXPECT(mf_check(a) == MF_OK);
  EXPECT(mf_free(a, p) == MF_OK);
  EXPECT(mf_get_stats(a, 0, &stats) == MF_OK && stats.allocated_bytes.current == 0);
  mf_allocator_destroy(a);

  uint64_t bytes = 0;
  EXPECT(mfp_parse_size("1.5GiB", &bytes) == MFP_OK && bytes == 3ull << 29);
  EXPECT(strcmp(mf_version(), mfp_version()) == 0);

  Dl_info where;
  EXPECT(dladdr((void *)mf_version, &where) != 0 && where.dli_fname != NULL);
  printf("memfit %s from %s\n", mf_version(), where.dli_fname);
  return 0;
}
