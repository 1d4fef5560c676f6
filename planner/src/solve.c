/* solve.c — the exact search for one batch size: a Pareto dynamic program
 * over the layers whose states (S, m, t) carry exactly what the simulator's
 * peak needs (derivation: PLAN.md, "The exact search"). Finds the fastest plan
 * that fits, or only whether one fits. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* One decision for one layer, reduced to what the recurrence uses. */
/* Options are indexed precision-major: option o is allowed[o / MFP_MODE_COUNT] in mode o % MFP_MODE_COUNT. */
typedef struct option {
  bool available; /* false: a mode the profile has no terms for, or checkpointing in a pass without it */
  int64_t kept;   /* K: bytes it keeps through the forward (kept, ckept when checkpointed, skept selectively) */
  int64_t local;  /* its backward's peak above the prefix and suffix: kept + bpk, or checkpointed
                     max(ckept + crpk, ckept + crd + cbpk), or selectively skept + sbpk */
  int64_t add;    /* what it adds to the backward of every earlier layer: kept + bd, ckept + crd + cbd, skept + sbd */
  int64_t fpk;    /* its forward transient: fpk, cfpk or sfpk */
  double dt;      /* tf + tb, ct when checkpointed, st selectively */
} option;

/* The mode of a state's last layer; the start state's, none (-1). */
static int option_mode(int o) { return o >= 0 ? o % MFP_MODE_COUNT : -1; }

static mfp_decision option_decision(const _mfp_solve_request *req, int o) {
  _mfp_mode mode = (_mfp_mode)(o % MFP_MODE_COUNT);
  return (mfp_decision){mode != MFP_MODE_KEEP, req->allowed[o / MFP_MODE_COUNT], mode == MFP_MODE_SELECTIVE};
}

/* After layer i: S = sum of K over layers <= i; m = max over j <= i of the
 * backward term of layer j (and the optimizer's, as j = 0) shifted by the
 * adds of layers j+1..i; t = time of layers <= i. */
typedef struct state {
  int64_t S, m;
  double t;
  int32_t parent;
  int32_t option;
} state;

typedef struct staircase {
  int64_t *S, *m; /* S ascending, m strictly descending */
  size_t len;
} staircase;

static int compare_states(const void *a, const void *b) {
  const state *x = a, *y = b;
  if (x->t != y->t) return x->t < y->t ? -1 : 1;
  if (x->S != y->S) return x->S < y->S ? -1 : 1;
  if (x->m != y->m) return x->m < y->m ? -1 : 1;
  return 0;
}

/* Is some (S', m') on the staircase <= (S, m) in both? */
static bool dominated(const staircase *sc, int64_t S, int64_t m) {
  size_t lo = 0, hi = sc->len; /* first index with S' > S */
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (sc->S[mid] <= S) lo = mid + 1;
    else hi = mid;
  }
  return lo > 0 && sc->m[lo - 1] <= m;
}

static void insert(staircase *sc, int64_t S, int64_t m) {
  size_t pos = 0, hi = sc->len; /* first index with S' >= S */
  while (pos < hi) {
    size_t mid = (pos + hi) / 2;
    if (sc->S[mid] < S) pos = mid + 1;
    else hi = mid;
  }
  size_t end = pos; /* points (S' >= S, m' >= m) are dominated by the new one */
  while (end < sc->len && sc->m[end] >= m) end++;
  if (end == pos) {
    memmove(sc->S + pos + 1, sc->S + pos, (sc->len - pos) * sizeof *sc->S);
    memmove(sc->m + pos + 1, sc->m + pos, (sc->len - pos) * sizeof *sc->m);
    sc->len++;
  } else if (end > pos + 1) {
    memmove(sc->S + pos + 1, sc->S + end, (sc->len - end) * sizeof *sc->S);
    memmove(sc->m + pos + 1, sc->m + end, (sc->len - end) * sizeof *sc->m);
    sc->len -= end - pos - 1;
  }
  sc->S[pos] = S;
  sc->m[pos] = m;
}

/* Merges the time-sorted segments [seg[o], seg[o+1]) of c into out, then
 * sorts each run of equal times by (S, m), so that out is in (t, S, m) order. */
static void merge(const state *c, const size_t *seg, int segments, state *out) {
  size_t head[MFP_MODE_COUNT * MFP_PRECISION_COUNT * MFP_MODE_COUNT * MFP_PRECISION_COUNT], k = 0;
  for (int o = 0; o < segments; o++) head[o] = seg[o];
  for (;;) {
    int best = -1;
    for (int o = 0; o < segments; o++)
      if (head[o] < seg[o + 1] && (best < 0 || c[head[o]].t < c[head[best]].t)) best = o;
    if (best < 0) break;
    out[k++] = c[head[best]++];
  }
  for (size_t run = 0; run < k;) {
    size_t end = run + 1;
    while (end < k && out[end].t == out[run].t) end++;
    if (end - run > 1) qsort(out + run, end - run, sizeof *out, compare_states);
    run = end;
  }
}

/* Keeps, in place, the states of c (in (t, S, m) order) that no other state
 * is <= in all of S, m, t. */
static size_t pareto(state *c, size_t n, staircase *sc) {
  sc->len = 0;
  size_t kept = 0;
  for (size_t j = 0; j < n; j++) {
    if (dominated(sc, c[j].S, c[j].m)) continue;
    insert(sc, c[j].S, c[j].m);
    c[kept++] = c[j];
  }
  return kept;
}

typedef struct memory_point {
  int64_t S, m;
  size_t index;
} memory_point;

static int compare_memory(const void *a, const void *b) {
  const memory_point *x = a, *y = b;
  if (x->S != y->S) return x->S < y->S ? -1 : 1;
  if (x->m != y->m) return x->m < y->m ? -1 : 1;
  return x->index < y->index ? -1 : x->index > y->index;
}

/* Note [Coarsening]: a front larger than the cap keeps (1) the fastest state
 * of each cell of a g x g grid over (S, m) and (2) states of the front that
 * ignores time (the leanest in memory), evenly thinned. (2) keeps a plan that
 * fits whenever one did, unless thinning removed it; (1) keeps fast ones. The
 * states kept are real, so the plan found fits; only optimality is lost. */
static mfp_status coarsen(state *front, size_t *n, uint32_t cap) {
  size_t g = (size_t)sqrt((double)cap / 2);
  if (g < 1) g = 1;
  int64_t smin = INT64_MAX, smax = INT64_MIN, mmin = INT64_MAX, mmax = INT64_MIN;
  for (size_t j = 0; j < *n; j++) {
    if (front[j].S < smin) smin = front[j].S;
    if (front[j].S > smax) smax = front[j].S;
    if (front[j].m < mmin) mmin = front[j].m;
    if (front[j].m > mmax) mmax = front[j].m;
  }
  bool *taken = calloc(g * g, sizeof *taken), *keep = calloc(*n, sizeof *keep);
  memory_point *mem = malloc(*n * sizeof *mem);
  if (!taken || !keep || !mem) {
    free(taken);
    free(keep);
    free(mem);
    return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory in the search");
  }
  double srange = (double)smax - (double)smin + 1, mrange = (double)mmax - (double)mmin + 1;
  for (size_t j = 0; j < *n; j++) { /* in time order: the first in a cell is its fastest */
    size_t cs = (size_t)(((double)front[j].S - (double)smin) / srange * (double)g);
    size_t cm = (size_t)(((double)front[j].m - (double)mmin) / mrange * (double)g);
    if (cs >= g) cs = g - 1;
    if (cm >= g) cm = g - 1;
    if (!taken[cs * g + cm]) taken[cs * g + cm] = keep[j] = true;
    mem[j] = (memory_point){front[j].S, front[j].m, j};
  }
  qsort(mem, *n, sizeof *mem, compare_memory);
  size_t lean = 0;
  int64_t best_m = INT64_MAX;
  for (size_t j = 0; j < *n; j++)
    if (mem[j].m < best_m) {
      best_m = mem[j].m;
      mem[lean++] = mem[j];
    }
  size_t quota = cap / 2 > 2 ? cap / 2 : 2;
  if (lean <= quota) {
    for (size_t j = 0; j < lean; j++) keep[mem[j].index] = true;
  } else {
    for (size_t r = 0; r < quota; r++) keep[mem[r * (lean - 1) / (quota - 1)].index] = true;
  }
  size_t kept = 0;
  for (size_t j = 0; j < *n; j++)
    if (keep[j]) front[kept++] = front[j];
  *n = kept;
  free(taken);
  free(keep);
  free(mem);
  return MFP_OK;
}

void _mfp_fastest_plan(const _mfp_model *m, const mfp_precision *allowed, int n_allowed, mfp_decision *out,
                       double *step_seconds) {
  /* Float addition is monotone in each argument, so the sum of each layer's
   * smallest time is the smallest sum; only the last layer's precision also
   * picks the loss terms. */
  size_t n = m->n_layers;
  double t = 0;
  for (size_t i = 0; i + 1 < n; i++) {
    int best = 0;
    double best_dt = INFINITY;
    for (int k = 0; k < n_allowed; k++) {
      const _mfp_layer_terms *x = &m->layer[allowed[k]][i];
      double dt = x->tf + x->tb;
      if (dt < best_dt) {
        best_dt = dt;
        best = k;
      }
    }
    out[i] = (mfp_decision){false, allowed[best], false};
    t += best_dt;
  }
  int best = 0;
  double best_t = INFINITY;
  for (int k = 0; k < n_allowed; k++) {
    const _mfp_layer_terms *x = &m->layer[allowed[k]][n - 1];
    const _mfp_step_terms *st = &m->step[allowed[k]][MFP_MODE_KEEP];
    double total = t + (x->tf + x->tb);
    total += st->tl;
    total += st->tlb;
    total += m->to;
    if (total < best_t) {
      best_t = total;
      best = k;
    }
  }
  out[n - 1] = (mfp_decision){false, allowed[best], false};
  *step_seconds = best_t;
}

/* Plans that need no search: the fastest one (then it is the answer), and,
 * when only feasibility is asked, every layer checkpointed in one precision. */
static bool try_simple_plans(const _mfp_solve_request *req, _mfp_solve_result *res) {
  const _mfp_model *m = req->model;
  mfp_simulation sim;
  double fastest;
  _mfp_fastest_plan(m, req->allowed, req->n_allowed, res->decisions, &fastest);
  _mfp_model_simulate(m, res->decisions, &sim);
  if ((req->modes >> MFP_MODE_KEEP & 1u) && sim.peak_bytes <= req->usable) {
    res->found = true;
    res->step_seconds = sim.step_seconds;
    res->peak_bytes = sim.peak_bytes;
    return true;
  }
  if (req->timed || !(req->modes >> MFP_MODE_CHECKPOINT & 1u)) return false;
  for (int k = 0; k < req->n_allowed; k++) {
    for (size_t i = 0; i < m->n_layers; i++) res->decisions[i] = (mfp_decision){true, req->allowed[k], false};
    _mfp_model_simulate(m, res->decisions, &sim);
    if (sim.peak_bytes <= req->usable) {
      res->found = true;
      res->step_seconds = sim.step_seconds;
      res->peak_bytes = sim.peak_bytes;
      return true;
    }
  }
  return false;
}

typedef struct workspace {
  option *options;            /* n_layers * n_options */
  int64_t *suffix_add;        /* sum over j > i of the smallest kept + bd */
  int64_t *suffix_kept;       /* sum over j > i of the smallest K */
  int64_t *next_fpk;          /* smallest fpk of layer i + 1 */
  double *suffix_time;        /* smallest time of layers j > i and the step's other windows */
  state *front, *cand;
  size_t cand_cap;
  staircase sc;
  int32_t **parent, **choice; /* per layer < n - 1: each front state's parent and option */
} workspace;

static void workspace_free(workspace *w, size_t n) {
  free(w->options);
  free(w->suffix_add);
  free(w->suffix_kept);
  free(w->next_fpk);
  free(w->suffix_time);
  free(w->front);
  free(w->cand);
  free(w->sc.S);
  free(w->sc.m);
  if (w->parent)
    for (size_t i = 0; i < n; i++) free(w->parent[i]);
  if (w->choice)
    for (size_t i = 0; i < n; i++) free(w->choice[i]);
  free(w->parent);
  free(w->choice);
}

static mfp_status grow(workspace *w, size_t need) {
  if (need <= w->cand_cap) return MFP_OK;
  size_t cap = w->cand_cap ? w->cand_cap : 1024;
  while (cap < need) cap *= 2;
  state *front = realloc(w->front, cap * sizeof *front);
  if (front) w->front = front;
  state *cand = realloc(w->cand, cap * sizeof *cand);
  if (cand) w->cand = cand;
  int64_t *S = realloc(w->sc.S, cap * sizeof *S);
  if (S) w->sc.S = S;
  int64_t *mm = realloc(w->sc.m, cap * sizeof *mm);
  if (mm) w->sc.m = mm;
  if (!front || !cand || !S || !mm) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory in the search");
  w->cand_cap = cap;
  return MFP_OK;
}

static mfp_status prepare(const _mfp_solve_request *req, workspace *w, int n_options, bool selective) {
  const _mfp_model *m = req->model;
  size_t n = m->n_layers;
  w->options = malloc(n * (size_t)n_options * sizeof *w->options);
  w->suffix_add = malloc(n * sizeof *w->suffix_add);
  w->suffix_kept = malloc(n * sizeof *w->suffix_kept);
  w->next_fpk = malloc(n * sizeof *w->next_fpk);
  w->suffix_time = malloc(n * sizeof *w->suffix_time);
  w->parent = calloc(n, sizeof *w->parent);
  w->choice = calloc(n, sizeof *w->choice);
  if (!w->options || !w->suffix_add || !w->suffix_kept || !w->next_fpk || !w->suffix_time || !w->parent ||
      !w->choice)
    return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory in the search");
  for (size_t i = 0; i < n; i++)
    for (int k = 0; k < req->n_allowed; k++) {
      const _mfp_layer_terms *x = &m->layer[req->allowed[k]][i];
      for (int mode = 0; mode < MFP_MODE_COUNT; mode++) {
        option *o = &w->options[i * (size_t)n_options + (size_t)(MFP_MODE_COUNT * k + mode)];
        o->available = (req->modes >> mode & 1u) && (mode != MFP_MODE_SELECTIVE || selective);
        if (mode == MFP_MODE_SELECTIVE) { /* one window: the recomputation and the backward */
          o->kept = x->skept;
          o->local = x->skept + x->sbpk;
          o->add = x->skept + x->sbd;
          o->fpk = x->sfpk;
          o->dt = x->st;
        } else if (mode == MFP_MODE_CHECKPOINT) { /* the recomputation's window, then the backward's, on top of what it kept */
          o->kept = x->ckept;
          o->local = x->ckept + x->crpk;
          if (x->ckept + x->crd + x->cbpk > o->local) o->local = x->ckept + x->crd + x->cbpk;
          o->add = x->ckept + x->crd + x->cbd;
          o->fpk = x->cfpk;
          o->dt = x->ct;
        } else {
          o->kept = x->kept;
          o->local = x->kept + x->bpk;
          o->add = x->kept + x->bd;
          o->fpk = x->fpk;
          o->dt = x->tf + x->tb;
        }
      }
    }
  int64_t add = 0, kept = 0;
  double seconds = INFINITY;
  for (int k = 0; k < req->n_allowed; k++)
    for (int mode = 0; mode < MFP_MODE_COUNT; mode++) {
      const _mfp_step_terms *st = &m->step[req->allowed[k]][mode];
      if (st->tl + st->tlb < seconds) seconds = st->tl + st->tlb;
    }
  seconds += m->to;
  for (size_t i = n; i-- > 0;) {
    w->suffix_add[i] = add;
    w->suffix_kept[i] = kept;
    w->suffix_time[i] = seconds;
    int64_t min_add = INT64_MAX, min_kept = INT64_MAX, min_fpk = INT64_MAX;
    double min_dt = INFINITY;
    for (int o = 0; o < n_options; o++) {
      const option *x = &w->options[i * (size_t)n_options + (size_t)o];
      if (!x->available) continue;
      if (x->add < min_add) min_add = x->add;
      if (x->kept < min_kept) min_kept = x->kept;
      if (x->fpk < min_fpk) min_fpk = x->fpk;
      if (x->dt < min_dt) min_dt = x->dt;
    }
    add += min_add;
    kept += min_kept;
    seconds += min_dt;
    if (i > 0) w->next_fpk[i - 1] = min_fpk;
  }
  w->next_fpk[n - 1] = 0;
  return MFP_OK;
}

/* One pass of the program. A finite time_bound (the time of a plan known to
 * fit) drops states whose fastest completion is slower: the optimum is never
 * dropped, since its states are at most its time (slack for the order of
 * float sums). */
static mfp_status solve_once(const _mfp_solve_request *req, double time_bound, _mfp_solve_result *res) {
  const _mfp_model *m = req->model;
  size_t n = m->n_layers;
  int64_t U = req->usable;
  res->found = false;
  res->exact = true;
  res->largest_front = 0;
  double cutoff = time_bound * (1 + 1e-9);
  int n_options = MFP_MODE_COUNT * req->n_allowed;
  workspace w = {0};
  mfp_status s = prepare(req, &w, n_options, req->selective);
  /* The loss and loss-backward terms come with the last layer's precision:
   * the bounds take the smallest over the allowed ones. */
  int64_t min_loss_add = INT64_MAX, min_loss_peak = INT64_MAX;
  for (int k = 0; k < req->n_allowed; k++)
    for (int mode = 0; mode < MFP_MODE_COUNT; mode++) {
      const _mfp_step_terms *st = &m->step[req->allowed[k]][mode];
      int64_t a = st->ld + st->lbd, pk = st->lpk > st->ld + st->lbpk ? st->lpk : st->ld + st->lbpk;
      if (a < min_loss_add) min_loss_add = a;
      if (pk < min_loss_peak) min_loss_peak = pk;
    }
  size_t front_len = 1;
  if (s == MFP_OK) s = grow(&w, 1);
  if (s == MFP_OK) w.front[0] = (state){0, m->fixed + m->opk, 0.0, -1, -1};
  double best_t = INFINITY;
  int32_t best_parent = -1, best_option = -1;
  /* Note [Boundary groups]: what a state's future costs depends on its last
   * layer's option, precision and mode (the boundary term, PLAN.md), so the
   * front is one Pareto front per option, in option order: group g is
   * front[group[g], group[g + 1]). The start state is in group 0 (layer 0 has
   * no boundary). With no boundaries charged, one front as before. */
  int n_groups = m->boundaries ? n_options : 1;
  size_t group[MFP_MODE_COUNT * MFP_PRECISION_COUNT + 1];
  group[0] = 0;
  for (int g = 1; g <= n_groups; g++) group[g] = 1;
  size_t seg[MFP_MODE_COUNT * MFP_PRECISION_COUNT * MFP_MODE_COUNT * MFP_PRECISION_COUNT + 1];
  int group_segments[MFP_MODE_COUNT * MFP_PRECISION_COUNT + 1];
  for (size_t i = 0; i < n && s == MFP_OK && front_len > 0; i++) {
    const option *opts = &w.options[i * (size_t)n_options];
    if (i + 1 == n) { /* the last layer: its precision brings the loss terms */
      for (size_t j = 0; j < front_len && !(best_option >= 0 && !req->timed); j++) {
        const state *from = &w.front[j];
        for (int o = 0; o < n_options; o++) {
          const option *x = &opts[o];
          if (!x->available) continue;
          const _mfp_step_terms *st = &m->step[req->allowed[o / MFP_MODE_COUNT]][o % MFP_MODE_COUNT];
          int64_t c = from->option < 0 ? 0
                      : _mfp_boundary(m, i, req->allowed[from->option / MFP_MODE_COUNT], option_mode(from->option),
                                      option_mode(o));
          int64_t base = m->fixed + from->S + c;
          int64_t S = from->S + c + x->kept, mm = from->m + c + x->add, F = m->fixed + S;
          if (base + x->local > mm) mm = base + x->local;
          if (base + x->fpk > U || F + st->lpk > U || F + st->ld + st->lbpk > U || mm + st->ld + st->lbd > U) continue;
          double total = 0;
          if (req->timed) {
            total = from->t + x->dt;
            total += st->tl;
            total += st->tlb;
            total += m->to;
          }
          if (total < best_t) {
            best_t = total;
            best_parent = (int32_t)j;
            best_option = o;
          }
        }
      }
      break;
    }
    if ((s = grow(&w, front_len * (size_t)n_options)) != MFP_OK) break;
    /* Option by option and source group by source group, so that each segment
     * of candidates is sorted by time like the group it comes from (float
     * addition is monotone); the segments of each option (the candidates' new
     * group) together, in option order (Note [Boundary groups]). */
    size_t len = 0;
    int segments = 0;
    for (int here = 0; here < n_groups; here++) {
      group_segments[here] = segments;
      for (int o = 0; o < n_options; o++) {
        const option *x = &opts[o];
        if (n_groups > 1 && o != here) continue;
        for (int g = 0; g < n_groups; g++) {
          seg[segments++] = len;
          for (size_t j = group[g]; j < group[g + 1] && x->available; j++) {
            const state *from = &w.front[j];
            int64_t c = i == 0 || n_groups == 1 ? 0
                        : _mfp_boundary(m, i, req->allowed[g / MFP_MODE_COUNT], option_mode(g), option_mode(o));
            int64_t base = m->fixed + from->S + c; /* the live bytes when layer i's forward opens */
            if (base + x->fpk > U) continue;
            state to = {from->S + c + x->kept, from->m + c + x->add, req->timed ? from->t + x->dt : 0.0, (int32_t)j, o};
            if (base + x->local > to.m) to.m = base + x->local;
            /* Bounds: no completion of this state can fit, or beat the bound. */
            if (to.m + w.suffix_add[i] + min_loss_add > U) continue;
            if (m->fixed + to.S + w.suffix_kept[i] + min_loss_peak > U) continue;
            if (m->fixed + to.S + w.next_fpk[i] > U) continue;
            if (to.t + w.suffix_time[i] > cutoff) continue;
            w.cand[len++] = to;
          }
        }
      }
    }
    seg[segments] = len;
    group_segments[n_groups] = segments;
    /* The old front is read: reuse it. Each group is its own Pareto front. */
    size_t kept = 0;
    for (int here = 0; here < n_groups; here++) {
      int a = group_segments[here], b = group_segments[here + 1];
      merge(w.cand, seg + a, b - a, w.front + kept);
      kept += pareto(w.front + kept, seg[b] - seg[a], &w.sc);
    }
    len = kept;
    if (len > req->front_cap) {
      if ((s = coarsen(w.front, &len, req->front_cap)) != MFP_OK) break;
      res->exact = false;
    }
    /* Coarsening keeps the order: the groups are still in option order. */
    group[0] = 0;
    for (int g = 0; g < n_groups; g++) {
      group[g + 1] = group[g];
      while (group[g + 1] < len && (n_groups == 1 || w.front[group[g + 1]].option == g)) group[g + 1]++;
    }
    if (len > res->largest_front) res->largest_front = len;
    w.parent[i] = malloc((len ? len : 1) * sizeof *w.parent[i]);
    w.choice[i] = malloc((len ? len : 1) * sizeof *w.choice[i]);
    if (!w.parent[i] || !w.choice[i]) {
      s = _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory in the search");
      break;
    }
    for (size_t j = 0; j < len; j++) {
      w.parent[i][j] = w.front[j].parent;
      w.choice[i][j] = w.front[j].option;
    }
    front_len = len;
  }
  if (s == MFP_OK && best_option >= 0) {
    int32_t at = best_parent, o = best_option;
    for (size_t i = n; i-- > 0;) {
      res->decisions[i] = option_decision(req, o);
      if (i == 0) break;
      o = w.choice[i - 1][at];
      at = w.parent[i - 1][at];
    }
    mfp_simulation sim;
    _mfp_model_simulate(m, res->decisions, &sim);
    /* The recurrence is the simulator rearranged: they must agree exactly. */
    if (sim.peak_bytes > U || (req->timed && sim.step_seconds != best_t))
      s = _mfp_error(MFP_ERR_INTERNAL,
                     "the search and the simulator disagree at batch %lld: peak %lld (usable %lld), step %.17g s "
                     "against %.17g s",
                     (long long)m->batch, (long long)sim.peak_bytes, (long long)U, sim.step_seconds, best_t);
    res->found = true;
    res->step_seconds = sim.step_seconds;
    res->peak_bytes = sim.peak_bytes;
  }
  workspace_free(&w, n);
  return s;
}

static mfp_status solve_one(const _mfp_solve_request *req, _mfp_solve_result *res) {
  res->found = false;
  res->exact = true;
  res->largest_front = 0;
  if (!req->model->in_range || req->model->fixed > req->usable) return MFP_OK;
  if (try_simple_plans(req, res)) return MFP_OK;
  mfp_status s = solve_once(req, INFINITY, res);
  if (s != MFP_OK || res->exact) return s;
  size_t n = req->model->n_layers, largest = res->largest_front;
  mfp_decision *first = malloc(n * sizeof *first);
  if (!first) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory in the search");
  _mfp_solve_result coarse = *res;
  memcpy(first, res->decisions, n * sizeof *first);
  if (req->timed && coarse.found) {
    /* Note [Bounded rerun]: the coarsened pass found a plan that fits; with
     * its time as a bound, far fewer states survive, and a rerun that never
     * coarsens is exact. Otherwise keep the faster of the two. */
    s = solve_once(req, coarse.step_seconds, res);
    if (s == MFP_OK && !res->exact && (!res->found || res->step_seconds > coarse.step_seconds)) {
      *res = coarse;
      memcpy(res->decisions, first, n * sizeof *first);
    }
  } else if (req->timed) {
    /* Coarsening lost every plan that fits: the untimed search keeps fewer
     * states, so it may still find one (slower, but it fits). */
    _mfp_solve_request untimed = *req;
    untimed.timed = false;
    s = solve_once(&untimed, INFINITY, res);
    res->exact = false;
  }
  free(first);
  if (largest > res->largest_front) res->largest_front = largest;
  return s;
}

/* Takes `other` into res when it is the better: found where res is not, or
 * (timed) faster; the exactness and front size of both passes kept either way. */
static void take_better(const _mfp_solve_request *req, _mfp_solve_result *res, const _mfp_solve_result *other) {
  bool take = other->found && (!res->found || (req->timed && other->step_seconds <= res->step_seconds) || !req->timed);
  bool exact = res->exact && other->exact;
  size_t largest = res->largest_front > other->largest_front ? res->largest_front : other->largest_front;
  if (take) {
    memcpy(res->decisions, other->decisions, req->model->n_layers * sizeof(mfp_decision));
    res->found = true;
    res->step_seconds = other->step_seconds;
    res->peak_bytes = other->peak_bytes;
  }
  res->exact = exact;
  res->largest_front = largest;
}

/* One more pass of `pass` into res (PLAN.md, "The exact search"). */
static mfp_status another_pass(const _mfp_solve_request *req, const _mfp_solve_request *pass, _mfp_solve_result *res) {
  _mfp_solve_result other = {.decisions = malloc(req->model->n_layers * sizeof(mfp_decision))};
  if (!other.decisions) return _mfp_error(MFP_ERR_HOST_MEMORY, "out of host memory in the search");
  mfp_status s = solve_one(pass, &other);
  if (s == MFP_OK) take_better(req, res, &other);
  free(other.decisions);
  return s;
}

/* The limit of a pass whose plans use the modes in `mask`. */
static int64_t pass_usable(const _mfp_solve_request *req, unsigned mask) {
  int64_t worst = 0;
  for (int m = 0; m < MFP_MODE_COUNT; m++)
    if ((mask >> m & 1u) && req->mode_correction[m] > worst) worst = req->mode_correction[m];
  if (mask & ~(1u << MFP_MODE_KEEP)) worst += req->checkpoint_correction;
  int64_t u = req->usable - worst;
  return u < 0 ? -1 : u;
}

/* The passes of one set of allowed precisions: the fastest plan that fits,
 * each plan within the usable bytes less the corrections of the modes it uses.
 * A pass per set of modes searches, exactly, plans of those modes within the
 * set's limit (which no plan of fewer modes exceeds); a set is searched only
 * where its limit is above that of every set that contains it (otherwise that
 * set's pass already covers its plans), so without corrections there is one
 * pass. */
static mfp_status solve_modes(const _mfp_solve_request *req, _mfp_solve_result *res, bool *first) {
  unsigned all = 1u << MFP_MODE_KEEP | 1u << MFP_MODE_CHECKPOINT | (req->selective ? 1u << MFP_MODE_SELECTIVE : 0u);
  mfp_status s = MFP_OK;
  for (unsigned mask = all; mask > 0 && s == MFP_OK; mask--) {
    if ((mask & all) != mask) continue;
    int64_t limit = pass_usable(req, mask);
    bool covered = false;
    for (unsigned wider = mask + 1; wider <= all && !covered; wider++)
      covered = (wider & all) == wider && (wider & mask) == mask && pass_usable(req, wider) >= limit;
    if (covered) continue;
    _mfp_solve_request pass = *req;
    pass.modes = mask;
    pass.usable = limit;
    if (*first) s = solve_one(&pass, res);
    else s = another_pass(req, &pass, res);
    *first = false;
  }
  return s;
}

/* The fastest plan that fits, every layer of it in one of the allowed
 * precisions: a plan's layers are not mixed across precisions, whose casts at
 * each boundary the model does not count (PLAN.md, "One precision per plan"),
 * so the passes run once per allowed precision and the fastest plan is kept. */
mfp_status _mfp_solve(const _mfp_solve_request *req, _mfp_solve_result *res) {
  bool first = true;
  mfp_status s = MFP_OK;
  for (int k = 0; k < req->n_allowed && s == MFP_OK; k++) {
    _mfp_solve_request one = *req;
    one.allowed = &req->allowed[k];
    one.n_allowed = 1;
    s = solve_modes(&one, res, &first);
  }
  return s;
}
