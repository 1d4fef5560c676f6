/* fuzz_util.h — what the fuzz harnesses share: the input as C text (a copy,
 * NUL-terminated, since fuzz inputs are bytes), and a check that aborts with
 * a message, so that libFuzzer and the corpus replayer both report it. */
#ifndef MEMFIT_FUZZ_UTIL_H
#define MEMFIT_FUZZ_UTIL_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A broken property of the code under test: a crash, as a sanitizer's is. */
#define FUZZ_CHECK(cond, ...)                                                        \
  do {                                                                               \
    if (!(cond)) {                                                                   \
      fprintf(stderr, "%s:%d: fuzz check failed: %s: ", __FILE__, __LINE__, #cond); \
      fprintf(stderr, __VA_ARGS__);                                                  \
      fputc('\n', stderr);                                                           \
      abort();                                                                       \
    }                                                                                \
  } while (0)

/* The input with a NUL after it (malloc'ed; NULL if out of memory). Inner NUL
 * bytes stay: C parsers see the text up to the first one. */
static inline char *fuzz_text(const uint8_t *data, size_t size) {
  char *text = malloc(size + 1);
  if (!text) return NULL;
  if (size) memcpy(text, data, size);
  text[size] = '\0';
  return text;
}

/* Where the part after the first NUL byte starts, or NULL when there is none:
 * a harness that takes two texts (a profile and options) splits its input there. */
static inline const char *fuzz_second_text(const char *text, size_t size) {
  size_t first = strlen(text);
  return first < size ? text + first + 1 : NULL;
}

/* MEMFIT_FUZZ_VERBOSE=1: each harness says how far an input got (parsed,
 * planned, replayed), to see what a corpus file exercises. */
static inline int fuzz_verbose(void) {
  static int verbose = -1;
  if (verbose < 0) verbose = getenv("MEMFIT_FUZZ_VERBOSE") && *getenv("MEMFIT_FUZZ_VERBOSE") == '1';
  return verbose;
}
#define FUZZ_SAY(...)                                     \
  do {                                                    \
    if (fuzz_verbose()) fprintf(stderr, "  " __VA_ARGS__); \
  } while (0)

/* A 64-bit FNV-1a of the input: picks among fixed choices (a budget, a
 * capacity) deterministically, so that a crash reproduces from its file. */
static inline uint64_t fuzz_hash(const uint8_t *data, size_t size) {
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < size; i++) h = (h ^ data[i]) * 1099511628211ull;
  return h;
}

#endif /* MEMFIT_FUZZ_UTIL_H */
