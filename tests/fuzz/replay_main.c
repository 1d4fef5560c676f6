/* replay_main.c — runs a fuzz harness's LLVMFuzzerTestOneInput over files,
 * without libFuzzer: every build (gcc too) replays the seed corpus and the
 * kept crash reproducers through it, as a ctest test (README.md here).
 * Arguments are files or directories (their regular files, in name order);
 * the empty input runs first, as libFuzzer runs it. */
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Each input gets a buffer of exactly its size, so that a harness reading
 * past the end is caught by AddressSanitizer here as it is under libFuzzer. */
static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    fprintf(stderr, "fuzz replay: cannot open %s\n", path);
    return -1;
  }
  size_t cap = 4096, len = 0;
  uint8_t *buf = malloc(cap);
  for (size_t got; buf; len += got) {
    if (len == cap) {
      uint8_t *bigger = realloc(buf, cap * 2);
      if (!bigger) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = bigger;
      cap *= 2;
    }
    got = fread(buf + len, 1, cap - len, f);
    if (got == 0) break;
  }
  int read_error = ferror(f);
  fclose(f);
  if (!buf || read_error) {
    free(buf);
    fprintf(stderr, "fuzz replay: cannot read %s\n", path);
    return -1;
  }
  uint8_t *exact = malloc(len ? len : 1);
  if (!exact) {
    free(buf);
    return -1;
  }
  memcpy(exact, buf, len);
  free(buf);
  /* The name goes out first: a crash report below it then says which input. */
  fprintf(stderr, "fuzz replay: %s (%zu bytes)\n", path, len);
  LLVMFuzzerTestOneInput(exact, len);
  free(exact);
  return 0;
}

static int compare_names(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

/* Returns the number of files run, or -1. */
static long run_dir(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) {
    fprintf(stderr, "fuzz replay: cannot open directory %s\n", dir);
    return -1;
  }
  char **names = NULL;
  size_t count = 0, cap = 0;
  long result = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (e->d_name[0] == '.') continue; /* ".", "..", and editors' dot files */
    if (count == cap) {
      cap = cap ? cap * 2 : 64;
      char **bigger = realloc(names, cap * sizeof *names);
      if (!bigger) {
        result = -1;
        break;
      }
      names = bigger;
    }
    size_t n = strlen(dir) + strlen(e->d_name) + 2;
    if (!(names[count] = malloc(n))) {
      result = -1;
      break;
    }
    snprintf(names[count++], n, "%s/%s", dir, e->d_name);
  }
  closedir(d);
  if (result == 0 && count) qsort(names, count, sizeof *names, compare_names);
  for (size_t i = 0; i < count; i++) {
    struct stat st;
    if (result >= 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode))
      result = run_file(names[i]) == 0 ? result + 1 : -1;
    free(names[i]);
  }
  free(names);
  return result;
}

int main(int argc, char **argv) {
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE_OR_DIR...\n", argv[0]);
    return 2;
  }
  LLVMFuzzerTestOneInput((const uint8_t *)"", 0);
  long total = 0;
  for (int i = 1; i < argc; i++) {
    struct stat st;
    if (stat(argv[i], &st) != 0) {
      fprintf(stderr, "fuzz replay: no such file or directory: %s\n", argv[i]);
      return 1;
    }
    long n = S_ISDIR(st.st_mode) ? run_dir(argv[i]) : run_file(argv[i]) == 0 ? 1 : -1;
    if (n < 0) return 1;
    total += n;
  }
  /* An empty corpus would make the test pass while checking nothing. */
  if (total == 0) {
    fprintf(stderr, "fuzz replay: no input files found\n");
    return 1;
  }
  printf("fuzz replay: %ld inputs ran without a crash\n", total);
  return 0;
}
