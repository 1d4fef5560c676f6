/* errors.c — the thread-local last-error message, the names of statuses and
 * enums, and small shared helpers (byte formatting, a monotonic clock). */
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "internal.h"

#define MFP_ERROR_LEN 1024

static _Thread_local char last_error[MFP_ERROR_LEN];

mfp_status _mfp_error(mfp_status status, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return status;
}

void _mfp_clear_error(void) { last_error[0] = '\0'; }

MFP_API const char *mfp_last_error(void) { return last_error; }

MFP_API const char *mfp_status_name(mfp_status s) {
  switch (s) {
  case MFP_OK: return "ok";
  case MFP_ERR_INVALID: return "invalid argument";
  case MFP_ERR_PROFILE: return "bad profile";
  case MFP_ERR_NO_FIT: return "nothing fits";
  case MFP_ERR_IO: return "i/o error";
  case MFP_ERR_HOST_MEMORY: return "out of host memory";
  case MFP_ERR_INTERNAL: return "internal error";
  }
  return "unknown status";
}

MFP_API const char *mfp_version(void) { return MEMFIT_VERSION; } /* CMake's project(VERSION) */

MFP_API void mfp_free(void *p) { free(p); }

MFP_API const char *mfp_precision_name(mfp_precision p) {
  switch (p) {
  case MFP_FP32: return "fp32";
  case MFP_BF16: return "bf16";
  case MFP_FP16: return "fp16";
  case MFP_PRECISION_COUNT: break;
  }
  return "unknown";
}

MFP_API const char *mfp_objective_name(mfp_objective o) {
  switch (o) {
  case MFP_OBJECTIVE_MAX_BATCH: return "max-batch";
  case MFP_OBJECTIVE_THROUGHPUT: return "throughput";
  case MFP_OBJECTIVE_GLOBAL_BATCH: return "global-batch";
  }
  return "unknown";
}

MFP_API const char *mfp_phase_name(mfp_phase p) {
  switch (p) {
  case MFP_PHASE_START: return "start";
  case MFP_PHASE_FORWARD: return "forward";
  case MFP_PHASE_LOSS: return "loss";
  case MFP_PHASE_LOSS_BACKWARD: return "loss_backward";
  case MFP_PHASE_RECOMPUTE: return "recompute";
  case MFP_PHASE_BACKWARD: return "backward";
  case MFP_PHASE_OPTIMIZER: return "optimizer";
  }
  return "unknown";
}

double _mfp_now_seconds(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
