/* plan_main.c — linked to memfit::memfit_plan only: the planner library finds
 * libmemfit (its private dependency) by itself. Prints the planner's version. */
#include <stdio.h>

#include <memfit/plan.h>

int main(void) {
  uint64_t bytes = 0;
  if (mfp_parse_size("512MiB", &bytes) != MFP_OK || bytes != 512ull << 20) {
    fprintf(stderr, "memfit_plan_consumer: mfp_parse_size(\"512MiB\"): %s\n", mfp_last_error());
    return 1;
  }
  printf("memfit-plan %s\n", mfp_version());
  return 0;
}
