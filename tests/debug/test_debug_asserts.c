/* test_debug_asserts.c — MEMFIT_DEBUG=1's counter asserts fire: a counter
 * taken below zero aborts with a message naming the bug and where, in a child
 * process; above zero nothing happens. Built with the allocator's internal
 * header at level 1 whatever the library's level (tests/debug/tests.cmake). */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "internal.h"

#if MEMFIT_DEBUG < 1
#error "this test is built with MEMFIT_DEBUG=1"
#endif

static int fail(const char *what) {
  fprintf(stderr, "test_debug_asserts: %s\n", what);
  return 1;
}

int main(void) {
  mf_counter c = {0};
  _mf_counter_add(&c, 4096);
  _mf_counter_dec(&c, 4096); /* back to zero: fine */
  if (c.current != 0 || c.peak != 4096 || c.total != 4096) return fail("counter arithmetic changed");

  int err[2];
  if (pipe(err) != 0) return fail("pipe failed");
  pid_t pid = fork();
  if (pid < 0) return fail("fork failed");
  if (pid == 0) {
    dup2(err[1], STDERR_FILENO);
    close(err[0]);
    _mf_counter_dec(&c, 512); /* below zero: must abort */
    _exit(0);
  }
  close(err[1]);
  char text[512] = "";
  size_t n = 0;
  ssize_t got;
  while (n + 1 < sizeof text && (got = read(err[0], text + n, sizeof text - 1 - n)) > 0) n += (size_t)got;
  text[n] = '\0';
  int status = 0;
  waitpid(pid, &status, 0);
  if (!WIFSIGNALED(status) || WTERMSIG(status) != SIGABRT) return fail("a counter below zero did not abort");
  if (!strstr(text, "debug assert failed") || !strstr(text, "below zero") || !strstr(text, "value -512"))
    return fail("the abort's message does not say what broke");
  printf("test_debug_asserts: a counter below zero aborts: %s", text);
  return 0;
}
