/* errors.c — the thread-local last-error message, status names, and the small
 * growable string buffer that reports and JSON are built in. */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

#define MF_ERROR_LEN 1024

static _Thread_local char last_error[MF_ERROR_LEN];
static _Thread_local mf_status last_status;

mf_status _mf_error(mf_status status, const char *fmt, ...) {
  last_status = status;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(last_error, sizeof last_error, fmt, ap);
  va_end(ap);
  return status;
}

void _mf_clear_error(void) {
  last_error[0] = '\0';
  last_status = MF_OK;
}

MF_API const char *mf_last_error(void) { return last_error; }
MF_API mf_status mf_last_status(void) { return last_status; }

MF_API const char *mf_status_name(mf_status s) {
  switch (s) {
  case MF_OK: return "ok";
  case MF_ERR_INVALID: return "invalid argument";
  case MF_ERR_OOM: return "out of memory";
  case MF_ERR_BACKEND: return "backend error";
  case MF_ERR_NO_DEVICE: return "no device";
  case MF_ERR_HOST_MEMORY: return "out of host memory";
  case MF_ERR_CORRUPT: return "corrupt allocator state";
  case MF_ERR_IO: return "i/o error";
  case MF_ERR_UNSUPPORTED: return "unsupported";
  }
  return "unknown status";
}

MF_API const char *mf_version(void) { return MEMFIT_VERSION; } /* CMake's project(VERSION) */

void _mf_sbuf_printf(mf_sbuf *s, const char *fmt, ...) {
  if (s->failed) return;
  for (;;) {
    size_t room = s->cap - s->len;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(s->data ? s->data + s->len : NULL, s->data ? room : 0, fmt, ap);
    va_end(ap);
    if (n < 0) { s->failed = true; return; }
    if (s->data && (size_t)n < room) { s->len += (size_t)n; return; }
    size_t cap = s->cap ? s->cap : 256;
    while (cap - s->len <= (size_t)n) cap *= 2;
    char *grown = realloc(s->data, cap);
    if (!grown) { s->failed = true; return; }
    s->data = grown;
    s->cap = cap;
  }
}

void _mf_sbuf_free(mf_sbuf *s) {
  free(s->data);
  memset(s, 0, sizeof *s);
}

mf_status _mf_sbuf_export(const mf_sbuf *s, char *buf, size_t len, size_t *needed) {
  const char *text = s->data ? s->data : "";
  size_t n = s->data ? s->len : 0;
  if (needed) *needed = n + 1;
  if (buf && len > 0) {
    size_t copy = n < len - 1 ? n : len - 1;
    memcpy(buf, text, copy);
    buf[copy] = '\0';
  }
  if (s->failed) return _mf_error(MF_ERR_HOST_MEMORY, "out of host memory while building text");
  return MF_OK;
}

void _mf_sbuf_json_string(mf_sbuf *s, const char *text) {
  _mf_sbuf_printf(s, "\"");
  for (const unsigned char *p = (const unsigned char *)text; *p; p++) {
    if (*p == '"' || *p == '\\') _mf_sbuf_printf(s, "\\%c", *p);
    else if (*p < 0x20) _mf_sbuf_printf(s, "\\u%04x", *p);
    else _mf_sbuf_printf(s, "%c", *p);
  }
  _mf_sbuf_printf(s, "\"");
}
