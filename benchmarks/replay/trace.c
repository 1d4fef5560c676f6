/* trace.c — reads a text trace ("alloc <id> <bytes> [<stream>]", "free <id>",
 * '#' comments) into a trace. Strict about the events, lenient about comments:
 * only the event log's "dev= cat= layer= phase=" annotations are read there. */
#include "trace.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "idmap.h"

typedef struct token {
  const char *text;
  size_t len;
} token;

/* Everything one parse needs, so that errors can clean up in one place. */
typedef struct parser {
  trace *t;
  idmap ids;
  uint32_t *free_slots; /* LIFO of slots freed by the trace: reuse keeps slots dense */
  size_t free_count;
  uint64_t *slot_size; /* requested size of each slot's live allocation */
  size_t slot_capacity;
  uint64_t live_requested;
  uint32_t line;
  char *err;
  size_t errlen;
} parser;

static trace_status fail(parser *p, trace_status status, const char *fmt, ...) {
  int n = 0;
  if (p->line) n = snprintf(p->err, p->errlen, "%s:%u: ", p->t->name, p->line);
  else n = snprintf(p->err, p->errlen, "%s: ", p->t->name);
  if (n < 0) n = 0;
  if ((size_t)n < p->errlen) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
    va_end(ap);
  }
  return status;
}

/* Ids are shown in messages; a pathological one is cut short. */
static int shown_len(const token *tok) { return tok->len > 64 ? 64 : (int)tok->len; }

static bool token_is(const token *tok, const char *word) {
  size_t n = strlen(word);
  return tok->len == n && memcmp(tok->text, word, n) == 0;
}

static bool read_all(FILE *f, char **data, size_t *len) {
  size_t cap = 1 << 20, used = 0;
  char *buf = malloc(cap);
  if (!buf) return false;
  for (;;) {
    if (used + 1 >= cap) { /* keep room for the terminating NUL */
      char *bigger = realloc(buf, cap * 2);
      if (!bigger) {
        free(buf);
        return false;
      }
      buf = bigger;
      cap *= 2;
    }
    size_t got = fread(buf + used, 1, cap - used - 1, f);
    used += got;
    if (got == 0) break;
  }
  buf[used] = '\0';
  *data = buf;
  *len = used;
  return true;
}

/* A decimal integer, or hexadecimal with 0x; false on anything else or overflow. */
static bool parse_uint(const token *tok, uint64_t *out) {
  const char *s = tok->text;
  size_t n = tok->len, i = 0;
  unsigned base = 10;
  if (n > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
    base = 16;
    i = 2;
  }
  if (i == n) return false;
  uint64_t v = 0;
  for (; i < n; i++) {
    unsigned d;
    unsigned char c = (unsigned char)s[i];
    if (c >= '0' && c <= '9') d = c - '0';
    else if (base == 16 && isxdigit(c)) d = (unsigned)(tolower(c) - 'a' + 10);
    else return false;
    if (v > (UINT64_MAX - d) / base) return false;
    v = v * base + d;
  }
  *out = v;
  return true;
}

/* Sizes are plain decimal in traces the tools write; "1.5MiB" and the other
 * forms of mf_parse_size are accepted for hand-written ones. */
/* The largest request the allocator takes (mf_malloc refuses more than
 * SIZE_MAX / 2): a trace asking more is bad input, not a failed replay. */
#define TRACE_MAX_SIZE (SIZE_MAX / 2)

static trace_status parse_size(parser *p, const token *tok, uint64_t *out) {
  if (memchr(tok->text, '\0', tok->len)) /* C text would end there: "12\0MiB" is not 12 bytes */
    return fail(p, TRACE_BAD_INPUT, "bad size: a NUL byte inside '%.*s'", shown_len(tok), tok->text);
  bool digits = tok->len > 0;
  for (size_t i = 0; i < tok->len && digits; i++) digits = isdigit((unsigned char)tok->text[i]);
  if (digits) {
    if (parse_uint(tok, out) && *out <= TRACE_MAX_SIZE) return TRACE_OK;
    return fail(p, TRACE_BAD_INPUT, "size '%.*s' is larger than any allocation (2^63 bytes)", shown_len(tok),
                tok->text);
  }
  char buf[64];
  if (tok->len >= sizeof buf || tok->text[0] == '-')
    return fail(p, TRACE_BAD_INPUT, "bad size '%.*s'", shown_len(tok), tok->text);
  memcpy(buf, tok->text, tok->len);
  buf[tok->len] = '\0';
  if (mf_parse_size(buf, out) != MF_OK)
    return fail(p, TRACE_BAD_INPUT, "bad size '%s': %s", buf, mf_last_error());
  if (*out > TRACE_MAX_SIZE)
    return fail(p, TRACE_BAD_INPUT, "size '%s' is larger than any allocation (2^63 bytes)", buf);
  return TRACE_OK;
}

/* Read the event log's annotations from an alloc line's comment. Anything
 * else in a comment, or an annotation with a value we do not know, is left
 * alone: a comment never makes a trace invalid. */
static void parse_annotations(const char *s, const char *end, trace_op *op) {
  while (s < end) {
    while (s < end && isspace((unsigned char)*s)) s++;
    const char *start = s;
    while (s < end && !isspace((unsigned char)*s)) s++;
    size_t n = (size_t)(s - start);
    const char *eq = memchr(start, '=', n);
    if (!eq) continue;
    size_t key_len = (size_t)(eq - start), value_len = n - key_len - 1;
    char value[256];
    if (value_len == 0 || value_len >= sizeof value) continue;
    memcpy(value, eq + 1, value_len);
    value[value_len] = '\0';
    if (key_len == 3 && memcmp(start, "dev", 3) == 0) {
      token tok = {value, value_len};
      uint64_t dev;
      if (parse_uint(&tok, &dev) && dev < 64) op->device = (uint8_t)dev;
    } else if (key_len == 3 && memcmp(start, "cat", 3) == 0) {
      int c = mf_category_from_name(value);
      if (c >= 0) op->tag.category = (uint8_t)c;
    } else if (key_len == 5 && memcmp(start, "phase", 5) == 0) {
      int ph = mf_phase_from_name(value);
      if (ph >= 0) op->tag.phase = (uint8_t)ph;
    } else if (key_len == 5 && memcmp(start, "layer", 5) == 0) {
      /* The event log writes "-" for "no layer". Interning fails to 0 too. */
      op->tag.layer = strcmp(value, "-") == 0 ? 0 : mf_layer_intern(value);
    }
  }
}

static trace_status push_op(parser *p, const trace_op *op) {
  trace *t = p->t;
  if (t->count == t->capacity) {
    size_t cap = t->capacity ? t->capacity * 2 : 4096;
    trace_op *ops = realloc(t->ops, cap * sizeof *ops);
    if (!ops) return fail(p, TRACE_NO_MEMORY, "out of host memory");
    t->ops = ops;
    uint32_t *lines = realloc(t->lines, cap * sizeof *lines);
    if (!lines) return fail(p, TRACE_NO_MEMORY, "out of host memory");
    t->lines = lines;
    t->capacity = cap;
  }
  t->ops[t->count] = *op;
  t->lines[t->count] = p->line;
  t->count++;
  return TRACE_OK;
}

static trace_status take_slot(parser *p, uint32_t *slot) {
  if (p->free_count) {
    *slot = p->free_slots[--p->free_count];
    return TRACE_OK;
  }
  trace *t = p->t;
  if (t->slots == IDMAP_NOT_LIVE) return fail(p, TRACE_BAD_INPUT, "too many live allocations");
  if (t->slots == p->slot_capacity) {
    size_t cap = p->slot_capacity ? p->slot_capacity * 2 : 1024;
    uint64_t *sizes = realloc(p->slot_size, cap * sizeof *sizes);
    if (!sizes) return fail(p, TRACE_NO_MEMORY, "out of host memory");
    p->slot_size = sizes;
    /* The free list never holds more than every slot. */
    uint32_t *free_slots = realloc(p->free_slots, cap * sizeof *free_slots);
    if (!free_slots) return fail(p, TRACE_NO_MEMORY, "out of host memory");
    p->free_slots = free_slots;
    p->slot_capacity = cap;
  }
  *slot = t->slots++;
  return TRACE_OK;
}

static trace_status parse_alloc(parser *p, const token *tok, int ntok, const char *comment,
                                const char *end) {
  if (ntok < 3 || ntok > 4)
    return fail(p, TRACE_BAD_INPUT, "malformed alloc: expected 'alloc <id> <bytes> [<stream>]'");
  trace_op op;
  memset(&op, 0, sizeof op);
  op.kind = TRACE_ALLOC;
  op.tag.category = MF_CAT_OTHER;
  op.tag.phase = MF_PHASE_NONE;
  trace_status st = parse_size(p, &tok[2], &op.size);
  if (st != TRACE_OK) return st;
  if (ntok == 4) {
    uint64_t stream;
    if (!parse_uint(&tok[3], &stream) || stream > UINTPTR_MAX)
      return fail(p, TRACE_BAD_INPUT, "bad stream '%.*s': expected an integer",
                  shown_len(&tok[3]), tok[3].text);
    op.stream = (uintptr_t)stream;
  }
  if (comment) {
    parse_annotations(comment, end, &op);
    if (op.tag.layer || op.tag.category != MF_CAT_OTHER || op.tag.phase != MF_PHASE_NONE)
      p->t->tagged = true;
    if (op.device + 1 > p->t->devices) p->t->devices = op.device + 1;
  }

  bool inserted;
  idmap_entry *e = idmap_upsert(&p->ids, tok[1].text, tok[1].len, &inserted);
  if (!e) return fail(p, TRACE_NO_MEMORY, "out of host memory");
  if (e->slot != IDMAP_NOT_LIVE)
    return fail(p, TRACE_BAD_INPUT, "alloc of id '%.*s', which is already live (allocated at line %u)",
                shown_len(&tok[1]), tok[1].text, e->line);
  uint32_t line = p->line;
  st = take_slot(p, &op.slot);
  if (st != TRACE_OK) return st;
  /* take_slot does not touch the id table, so e is still valid. */
  e->slot = op.slot;
  e->line = line;
  p->slot_size[op.slot] = op.size;
  p->live_requested += op.size;
  p->t->total_requested += op.size;
  if (p->live_requested > p->t->peak_requested) p->t->peak_requested = p->live_requested;
  p->t->allocs++;
  return push_op(p, &op);
}

static trace_status parse_free(parser *p, const token *tok, int ntok) {
  if (ntok != 2) return fail(p, TRACE_BAD_INPUT, "malformed free: expected 'free <id>'");
  bool inserted;
  idmap_entry *e = idmap_upsert(&p->ids, tok[1].text, tok[1].len, &inserted);
  if (!e) return fail(p, TRACE_NO_MEMORY, "out of host memory");
  if (inserted)
    return fail(p, TRACE_BAD_INPUT, "free of unknown id '%.*s' (never allocated)",
                shown_len(&tok[1]), tok[1].text);
  if (e->slot == IDMAP_NOT_LIVE)
    return fail(p, TRACE_BAD_INPUT, "double free of id '%.*s' (already freed at line %u)",
                shown_len(&tok[1]), tok[1].text, e->line);
  trace_op op;
  memset(&op, 0, sizeof op);
  op.kind = TRACE_FREE;
  op.slot = e->slot;
  e->slot = IDMAP_NOT_LIVE;
  e->line = p->line;
  p->free_slots[p->free_count++] = op.slot;
  p->live_requested -= p->slot_size[op.slot];
  p->t->frees++;
  return push_op(p, &op);
}

static trace_status parse_line(parser *p, const char *s, size_t len) {
  const char *end = s + len;
  const char *comment = memchr(s, '#', len);
  const char *content_end = comment ? comment : end;
  token tok[5];
  int ntok = 0;
  const char *c = s;
  while (c < content_end) {
    while (c < content_end && isspace((unsigned char)*c)) c++;
    if (c == content_end) break;
    const char *start = c;
    while (c < content_end && !isspace((unsigned char)*c)) c++;
    if (ntok == 5) return fail(p, TRACE_BAD_INPUT, "malformed line: too many fields");
    tok[ntok].text = start;
    tok[ntok].len = (size_t)(c - start);
    ntok++;
  }
  if (ntok == 0) return TRACE_OK; /* blank or comment-only */
  if (token_is(&tok[0], "alloc")) return parse_alloc(p, tok, ntok, comment ? comment + 1 : NULL, end);
  if (token_is(&tok[0], "free")) return parse_free(p, tok, ntok);
  return fail(p, TRACE_BAD_INPUT, "malformed line: unknown event '%.*s' (expected alloc or free)",
              shown_len(&tok[0]), tok[0].text);
}

/* Slots still live after the last event: the replayer frees them, untimed,
 * after each pass, newest first, as a program unwinding its allocations would.
 * (The id table's order is a hash order: 10^6 live ids freed in it took 6x as
 * long as freed in order, each free landing in a different part of the heap.) */
static trace_status collect_live(parser *p) {
  trace *t = p->t;
  size_t live = (size_t)t->slots - p->free_count;
  if (!live) return TRACE_OK;
  t->live_at_end = malloc(live * sizeof *t->live_at_end);
  unsigned char *is_live = calloc((size_t)t->slots, 1);
  if (!t->live_at_end || !is_live) {
    free(is_live);
    return fail(p, TRACE_NO_MEMORY, "out of host memory");
  }
  for (size_t i = 0; i < p->ids.capacity; i++) {
    const idmap_entry *e = &p->ids.buckets[i];
    if (e->hash && e->slot != IDMAP_NOT_LIVE) is_live[e->slot] = 1;
  }
  for (size_t i = t->count; i-- > 0 && t->live_at_end_count < live;) {
    const trace_op *op = &t->ops[i];
    if (op->kind == TRACE_ALLOC && is_live[op->slot]) {
      is_live[op->slot] = 0; /* a slot's last alloc is the live one */
      t->live_at_end[t->live_at_end_count++] = op->slot;
    }
  }
  free(is_live);
  return TRACE_OK;
}

trace_status trace_load(const char *path, trace *out, char *err, size_t errlen) {
  memset(out, 0, sizeof *out);
  out->devices = 1;
  bool is_stdin = strcmp(path, "-") == 0;
  out->name = strdup(is_stdin ? "<stdin>" : path);
  if (!out->name) {
    snprintf(err, errlen, "out of host memory");
    return TRACE_NO_MEMORY;
  }
  parser p;
  memset(&p, 0, sizeof p);
  p.t = out;
  p.err = err;
  p.errlen = errlen;
  idmap_init(&p.ids);

  trace_status st = TRACE_OK;
  char *data = NULL;
  size_t len = 0;
  FILE *f = is_stdin ? stdin : fopen(path, "rb");
  if (!f) {
    st = fail(&p, TRACE_BAD_INPUT, "cannot open: %s", strerror(errno));
  } else {
    bool ok = read_all(f, &data, &len);
    bool read_error = ferror(f);
    if (!is_stdin) fclose(f);
    if (!ok) st = fail(&p, TRACE_NO_MEMORY, "out of host memory reading the trace");
    else if (read_error) st = fail(&p, TRACE_BAD_INPUT, "read error");
  }

  for (size_t pos = 0; st == TRACE_OK && pos < len;) {
    const char *s = data + pos;
    const char *nl = memchr(s, '\n', len - pos);
    size_t line_len = nl ? (size_t)(nl - s) : len - pos;
    pos += line_len + 1;
    if (p.line == UINT32_MAX) {
      st = fail(&p, TRACE_BAD_INPUT, "too many lines");
      break;
    }
    p.line++;
    if (line_len && s[line_len - 1] == '\r') line_len--; /* traces written on Windows */
    st = parse_line(&p, s, line_len);
  }
  if (st == TRACE_OK) {
    p.line = 0;
    st = collect_live(&p);
  }

  free(data);
  free(p.free_slots);
  free(p.slot_size);
  idmap_destroy(&p.ids);
  if (st != TRACE_OK) trace_free(out);
  return st;
}

void trace_free(trace *t) {
  free(t->name);
  free(t->ops);
  free(t->lines);
  free(t->live_at_end);
  memset(t, 0, sizeof *t);
}
