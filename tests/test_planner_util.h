// test_planner_util.h — helpers shared by the planner's GoogleTest files: a
// tiny JSON value (to write profiles and break them field by field), a
// synthetic profile generated from the model itself, and owning handles.
#ifndef MEMFIT_TEST_PLANNER_UTIL_H
#define MEMFIT_TEST_PLANNER_UTIL_H

#include <gtest/gtest.h>
#include <memfit/plan.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <functional>
#include <memory>
#include <random>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace planner_test {

// ------------------------------------------------------------- JSON value

struct Json {
  enum Kind { Null, Bool, Int, Real, String, Array, Object } kind = Null;
  bool b = false;
  int64_t i = 0;
  double r = 0;
  std::string s;
  std::vector<Json> items;
  std::vector<std::pair<std::string, Json>> fields;

  Json() = default;
  Json(int v) : kind(Int), i(v) {}
  Json(int64_t v) : kind(Int), i(v) {}
  Json(double v) : kind(Real), r(v) {}
  Json(bool v) : kind(Bool), b(v) {}
  Json(const char *v) : kind(String), s(v) {}
  Json(std::string v) : kind(String), s(std::move(v)) {}
  static Json object() { Json j; j.kind = Object; return j; }
  static Json array() { Json j; j.kind = Array; return j; }

  Json &set(const std::string &key, Json v) {
    for (auto &f : fields)
      if (f.first == key) { f.second = std::move(v); return *this; }
    fields.emplace_back(key, std::move(v));
    return *this;
  }
  Json &operator[](const std::string &key) {
    for (auto &f : fields)
      if (f.first == key) return f.second;
    fields.emplace_back(key, Json());
    return fields.back().second;
  }
  Json &operator[](size_t k) { return items[k]; }
  void push(Json v) { items.push_back(std::move(v)); }
  void erase(const std::string &key) {
    fields.erase(std::remove_if(fields.begin(), fields.end(), [&](auto &f) { return f.first == key; }), fields.end());
  }

  void dump(std::ostringstream &o) const {
    switch (kind) {
    case Null: o << "null"; break;
    case Bool: o << (b ? "true" : "false"); break;
    case Int: o << i; break;
    case Real: {
      char buf[40];
      snprintf(buf, sizeof buf, "%.17g", r);
      std::string t = buf;
      if (t.find_first_of(".eEn") == std::string::npos) t += ".0";
      o << t;
      break;
    }
    case String: o << '"' << s << '"'; break;
    case Array:
      o << '[';
      for (size_t k = 0; k < items.size(); k++) {
        if (k) o << ',';
        items[k].dump(o);
      }
      o << ']';
      break;
    case Object:
      o << '{';
      for (size_t k = 0; k < fields.size(); k++) {
        if (k) o << ',';
        o << '"' << fields[k].first << "\":";
        fields[k].second.dump(o);
      }
      o << '}';
      break;
    }
  }
  std::string str() const {
    std::ostringstream o;
    dump(o);
    return o.str();
  }
};

// ------------------------------------------------------- synthetic profiles

// value(b) = a + s * b, integers for bytes so that the fits are exact.
struct ByteLine { int64_t a = 0, s = 0; int64_t at(int64_t b) const { return a + s * b; } };
struct TimeLine { double a = 0, s = 0; double at(int64_t b) const { return a + s * b; } };

// c*: the layer in the every-layer-checkpointed run, s*: in the every-layer-selective
// run (used when the options ask for them).
struct SynthLayer {
  ByteLine fpk, kept, out, bpk, bd; TimeLine tf, tb;
  ByteLine cfpk, ckept, cbpk, cbd; TimeLine ctf, ctb;
  ByteLine sfpk, skept, sbpk, sbd; TimeLine stf, stb;
  bool held_measured = false; ByteLine held[3];  // what of its output the layer holds, per mode
};
struct SynthPrecision {
  mfp_precision precision;
  std::vector<SynthLayer> layers;
  ByteLine lpk, ld, lbpk, lbd;
  TimeLine tl, tlb;
  // What the loss window keeps in the checkpointed and selective runs (what the
  // last layer keeps changes what the loss frees): ld unless drawn.
  ByteLine cld, sld;
};
struct Synth {
  bool measured_checkpoint = false;  // settings carry a "checkpointed" run
  bool measured_selective = false;   // ... and a "selective" run
  std::vector<std::string> names;
  std::vector<int64_t> batches;
  std::vector<SynthPrecision> precisions;  // settings[0]'s precision first
  ByteLine fixed, opk, od;
  TimeLine to;
};

struct SynthOptions {
  size_t layers = 4;
  int precisions = 1;
  int batch_sizes = 2;
  bool negative_bd_slopes = false;  // bd may shrink with the batch (kept + bd may not)
  bool measured_checkpoint = false;  // give every setting a "checkpointed" run with its own terms
  bool measured_selective = false;   // and a "selective" run (needs measured_checkpoint)
};

// Random terms that make a valid profile: every window's peak is above its
// start and end, every slope is >= 0 (except bd's and lbd's when asked, with
// kept + bd and ld + lbd still >= 0), and what backward frees is bounded.
inline Synth make_synth(std::mt19937_64 &rng, const SynthOptions &o) {
  auto uni = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  auto real = [&](double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); };
  Synth s;
  s.measured_checkpoint = o.measured_checkpoint;
  s.measured_selective = o.measured_selective;
  for (size_t i = 0; i < o.layers; i++) s.names.push_back("layers." + std::to_string(i));
  std::vector<int64_t> pool = {1, 2, 3, 4, 6, 8};
  std::shuffle(pool.begin(), pool.end(), rng);
  s.batches.assign(pool.begin(), pool.begin() + o.batch_sizes);
  std::sort(s.batches.begin(), s.batches.end());
  std::vector<mfp_precision> precs = {MFP_FP32, MFP_BF16, MFP_FP16};
  std::shuffle(precs.begin(), precs.end(), rng);
  s.fixed = {uni(200000, 400000), uni(0, 2000)};
  s.od = {uni(0, 500), 0};
  s.opk = {std::max<int64_t>(s.od.a, 0) + uni(0, 40000), uni(0, 200)};
  s.to = {real(0.001, 0.01), real(0, 0.0005)};
  for (int k = 0; k < o.precisions; k++) {
    SynthPrecision p;
    p.precision = precs[k];
    for (size_t i = 0; i < o.layers; i++) {
      SynthLayer l;
      l.kept = {uni(0, 8000), uni(0, 3000)};
      l.out = {uni(0, l.kept.a), uni(0, l.kept.s)};
      if (uni(0, 5) == 0) l.out = {uni(0, 9000), uni(0, 3500)};  // an output larger than what it keeps
      l.fpk = {l.kept.a + uni(0, 6000), l.kept.s + uni(0, 2500)};
      l.bd = {uni(-l.kept.a - 2000, 3000), o.negative_bd_slopes ? uni(-l.kept.s, 300) : uni(0, 300)};
      l.bpk = {std::max<int64_t>(l.bd.a, 0) + uni(0, 7000), std::max<int64_t>(l.bd.s, 0) + uni(0, 2500)};
      l.tf = {real(0.0005, 0.01), real(0, 0.004)};
      l.tb = {real(0.0005, 0.02), real(0, 0.008)};
      // Checkpointed: keeps at most what it keeps otherwise, more than its output
      // sometimes (what the enclosing module holds); its backward window holds
      // the recomputation. Its time is sometimes below tf + tb (noise).
      l.ckept = {uni(0, l.kept.a), uni(0, l.kept.s)};
      if (uni(0, 4) == 0) l.ckept = {uni(0, 9000), uni(0, 3500)};
      l.cfpk = {l.ckept.a + uni(0, 6000), l.ckept.s + uni(0, 2500)};
      l.cbd = {uni(-l.ckept.a - 2000, 3000), o.negative_bd_slopes ? uni(-l.ckept.s, 300) : uni(0, 300)};
      l.cbpk = {std::max<int64_t>(l.cbd.a, 0) + uni(0, 12000), std::max<int64_t>(l.cbd.s, 0) + uni(0, 4000)};
      l.ctf = {real(0.0004, 0.01), real(0, 0.004)};
      l.ctb = {real(0.0005, 0.03), real(0, 0.012)};
      // Selective (drawn only when asked, so other profiles keep their stream):
      // keeps between the two (sometimes more than either), a backward window
      // with a smaller recomputation; its time near tf + tb.
      if (o.measured_selective) {
        l.skept = {uni(std::min(l.ckept.a, l.kept.a), std::max(l.ckept.a, l.kept.a)),
                   uni(std::min(l.ckept.s, l.kept.s), std::max(l.ckept.s, l.kept.s))};
        if (uni(0, 5) == 0) l.skept = {uni(0, 9000), uni(0, 3500)};
        l.sfpk = {l.skept.a + uni(0, 6000), l.skept.s + uni(0, 2500)};
        l.sbd = {uni(-l.skept.a - 2000, 3000), o.negative_bd_slopes ? uni(-l.skept.s, 300) : uni(0, 300)};
        l.sbpk = {std::max<int64_t>(l.sbd.a, 0) + uni(0, 9000), std::max<int64_t>(l.sbd.s, 0) + uni(0, 3000)};
        l.stf = {l.tf.a * real(0.9, 1.2), l.tf.s * real(0.9, 1.2)};
        l.stb = {l.tb.a * real(0.9, 1.5), l.tb.s * real(0.9, 1.5)};
        l.held_measured = true;
        // Quarters of the output (so that each difference keeps its sign across batches, as a
        // tensor's share does): a falling boundary term would make feasibility not monotone.
        for (auto &h : l.held) {
          int64_t q = uni(0, 4);
          h = {l.out.a * q / 4, l.out.s * q / 4};
        }
        l.held[1] = uni(0, 3) ? ByteLine{} : l.held[1];  // a checkpointed layer rarely holds its output
      }
      p.layers.push_back(l);
    }
    p.ld = {uni(0, 600), uni(0, 50)};
    p.lpk = {p.ld.a + uni(0, 9000), p.ld.s + uni(0, 1500)};
    p.lbd = {uni(-500, 3000), o.negative_bd_slopes ? uni(-p.ld.s, 100) : uni(0, 100)};
    p.lbpk = {std::max<int64_t>(p.lbd.a, 0) + uni(0, 9000), std::max<int64_t>(p.lbd.s, 0) + uni(0, 1500)};
    p.tl = {real(0.0002, 0.003), real(0, 0.001)};
    p.tlb = {real(0.0002, 0.003), real(0, 0.001)};
    p.cld = p.sld = p.ld;
    if (o.measured_selective) {
      p.cld = {p.ld.a + uni(0, 2000), p.ld.s + uni(0, 100)};
      p.sld = {p.ld.a + uni(0, 2000), p.ld.s + uni(0, 100)};
    }
    s.precisions.push_back(p);
  }
  return s;
}

inline Json window(int64_t start, int64_t delta_peak, int64_t delta_end) {
  return Json::object().set("start", start).set("peak", start + delta_peak).set("end", start + delta_end);
}

inline Json totals() {
  Json t = Json::object();
  for (const char *k : {"parameter", "gradient", "optimizer_state", "activation", "temporary", "input", "other"})
    t.set(k, 0);
  return t;
}

// The model's own walk (no checkpoint) at batch b: the windows and their peak.
// Synthetic profiles come from a page-mapped allocator that reserved one page
// beyond its blocks: the reserve model's overhead.
constexpr int64_t kSynthGranule = 2 * 1024 * 1024;
constexpr int64_t kSynthReserveOverhead = 4096;

// One run's windows at batch b, every layer checkpointed (mode 1), selectively
// (mode 2) or none (0): the walk of PLAN.md written out independently of the planner.
struct SynthRun {
  Json layers = Json::array(), loss, loss_backward, optimizer;
  int64_t fixed = 0, peak = 0;
  double step = 0;
};

inline SynthRun synth_run(const Synth &s, const SynthPrecision &p, int64_t b, int mode) {
  bool checkpointed = mode != 0, selective = mode == 2;
  size_t n = s.names.size();
  SynthRun r;
  int64_t cur = r.fixed = s.fixed.at(b);
  r.peak = cur;
  auto track = [&](int64_t v) { r.peak = std::max(r.peak, v); };
  std::vector<Json> fwd(n), bwd(n);
  for (size_t i = 0; i < n; i++) {
    const SynthLayer &l = p.layers[i];
    const ByteLine &pk = selective ? l.sfpk : checkpointed ? l.cfpk : l.fpk,
                   &kept = selective ? l.skept : checkpointed ? l.ckept : l.kept;
    fwd[i] = window(cur, pk.at(b), kept.at(b));
    track(cur + pk.at(b));
    cur += kept.at(b);
  }
  const ByteLine &ld = selective ? p.sld : checkpointed ? p.cld : p.ld;
  int64_t lpk = p.lpk.at(b) + ld.at(b) - p.ld.at(b);  // its peak above its end by as much
  r.loss = window(cur, lpk, ld.at(b));
  track(cur + lpk);
  cur += ld.at(b);
  r.loss_backward = window(cur, p.lbpk.at(b), p.lbd.at(b));
  track(cur + p.lbpk.at(b));
  cur += p.lbd.at(b);
  for (size_t i = n; i-- > 0;) {
    const SynthLayer &l = p.layers[i];
    const ByteLine &pk = selective ? l.sbpk : checkpointed ? l.cbpk : l.bpk,
                   &d = selective ? l.sbd : checkpointed ? l.cbd : l.bd;
    bwd[i] = window(cur, pk.at(b), d.at(b));
    track(cur + pk.at(b));
    cur += d.at(b);
  }
  r.optimizer = window(cur, s.opk.at(b), s.od.at(b));
  track(cur + s.opk.at(b));
  for (size_t i = 0; i < n; i++) {
    const SynthLayer &l = p.layers[i];
    double tf = selective ? l.stf.at(b) : checkpointed ? l.ctf.at(b) : l.tf.at(b),
           tb = selective ? l.stb.at(b) : checkpointed ? l.ctb.at(b) : l.tb.at(b);
    r.step += tf + tb;
    Json layer = Json::object().set("name", s.names[i]);
    if (!checkpointed)
      layer.set("type", "Block")
          .set("parameter_bytes", 1000)
          .set("gradient_bytes", 1000)
          .set("optimizer_state_bytes", 2000)
          .set("activation_bytes", l.kept.at(b))
          .set("output_bytes", l.out.at(b))
          .set("output_allocated_bytes", l.out.at(b))
          .set("forward_temporary_peak_bytes", l.fpk.at(b) - l.kept.at(b))
          .set("backward_temporary_peak_bytes", l.bpk.at(b));
    layer.set("forward_seconds", tf).set("backward_seconds", tb).set("forward", fwd[i]).set("backward", bwd[i]);
    if (l.held_measured) layer.set("output_held_bytes", l.held[mode].at(b));
    r.layers.push(layer);
  }
  r.step += p.tl.at(b) + p.tlb.at(b) + s.to.at(b);
  return r;
}

inline Json synth_setting(const Synth &s, const SynthPrecision &p, int64_t b, int64_t *peak_out = nullptr) {
  SynthRun r = synth_run(s, p, b, 0);
  if (peak_out) *peak_out = r.peak;
  Json setting = Json::object()
      .set("batch_size", b)
      .set("precision", mfp_precision_name(p.precision))
      .set("peak_allocated_bytes", r.peak)
      .set("peak_reserved_bytes", r.peak + kSynthReserveOverhead)
      .set("peak_requested_bytes", r.peak)
      .set("fixed_bytes", r.fixed)
      .set("input_bytes", 64 * b)
      .set("totals", totals())
      .set("totals_allocated", totals())
      .set("step_seconds", r.step)
      .set("loss", r.loss)
      .set("loss_backward", r.loss_backward)
      .set("optimizer", r.optimizer)
      .set("loss_seconds", p.tl.at(b))
      .set("loss_backward_seconds", p.tlb.at(b))
      .set("optimizer_seconds", s.to.at(b))
      .set("layers", r.layers);
  for (int mode = 1; mode <= 2; mode++) {
    if (!(mode == 1 ? s.measured_checkpoint : s.measured_selective)) continue;
    SynthRun c = synth_run(s, p, b, mode);
    setting.set(mode == 1 ? "checkpointed" : "selective", Json::object()
                                    .set("peak_allocated_bytes", c.peak)
                                    .set("peak_reserved_bytes", c.peak + kSynthReserveOverhead)
                                    .set("step_seconds", c.step)
                                    .set("fixed_bytes", c.fixed)
                                    .set("loss", c.loss)
                                    .set("loss_backward", c.loss_backward)
                                    .set("optimizer", c.optimizer)
                                    .set("layers", c.layers));
  }
  return setting;
}

inline Json synth_profile(const Synth &s) {
  Json settings = Json::array();
  for (const SynthPrecision &p : s.precisions)
    for (int64_t b : s.batches) settings.push(synth_setting(s, p, b));
  return Json::object()
      .set("format", "memfit-profile")
      .set("version", 1)
      .set("memfit_version", "0.1.0")
      .set("torch_version", "2.4.0")
      .set("device", "cuda")
      .set("device_name", "synthetic")
      .set("job", "synthetic.py:build")
      .set("optimizer", "AdamW")
      .set("rounding_bytes", 512)
      .set("warmup_steps", 1)
      .set("steps", 2)
      .set("granule_bytes", kSynthGranule)
      .set("settings", settings);
}

// ----------------------------------------------------------------- handles

struct ProfileDeleter { void operator()(mfp_profile *p) const { mfp_profile_free(p); } };
struct PlanDeleter { void operator()(mfp_plan_result *p) const { mfp_plan_free(p); } };
using Profile = std::unique_ptr<mfp_profile, ProfileDeleter>;
using Plan = std::unique_ptr<mfp_plan_result, PlanDeleter>;

inline Profile parse(const std::string &json) {
  mfp_profile *p = nullptr;
  mfp_status s = mfp_profile_parse(json.c_str(), &p);
  EXPECT_EQ(s, MFP_OK) << mfp_last_error();
  return Profile(p);
}

// What mfp_plan computes as the usable bytes (for reserved bytes).
inline int64_t usable_bytes(uint64_t budget, double headroom) {
  return (int64_t)std::floor((double)budget * (1.0 - headroom));
}

// The allocated peak a synthetic profile's plan may reach: PLAN.md's reserve
// model with page-mapped pools, reserved = allocated + the profile's overhead.
inline int64_t allocated_limit(uint64_t budget, double headroom) {
  return usable_bytes(budget, headroom) - kSynthReserveOverhead;
}

// The synthetic profile with checkpoint checks whose measured peaks are the
// model's every-layer-checkpointed peaks plus `extra(batch, that peak)`.
// The profile with checkpoint checks (every layer checkpointed) at each of its
// batch sizes in the precisions `which` (indexes into synth.precisions), each
// measuring the model's peak plus extra(precision index, batch, peak).
inline Json with_checks_in(const Synth &synth, const std::vector<size_t> &which,
                           const std::function<int64_t(size_t, int64_t, int64_t)> &extra) {
  Json profile = synth_profile(synth);
  Profile bare = parse(profile.str());
  size_t n = mfp_profile_layer_count(bare.get());
  Json checks = Json::array();
  for (size_t q : which) {
    mfp_precision precision = synth.precisions[q].precision;
    std::vector<mfp_decision> all(n, mfp_decision{true, precision, false});
    for (int64_t b : synth.batches) {
      mfp_simulation sim;
      EXPECT_EQ(mfp_simulate(bare.get(), b, all.data(), n, &sim), MFP_OK);
      int64_t measured = sim.peak_bytes + extra(q, b, sim.peak_bytes);
      checks.push(Json::object()
                      .set("batch_size", b)
                      .set("precision", mfp_precision_name(precision))
                      .set("peak_allocated_bytes", measured)
                      .set("peak_reserved_bytes", measured + kSynthReserveOverhead));
    }
  }
  profile.set("checkpoint_checks", checks);
  return profile;
}

// Checks in the first precision, measuring the model's peak plus extra(batch, peak).
inline Json with_checks(const Synth &synth, const std::function<int64_t(int64_t, int64_t)> &extra) {
  return with_checks_in(synth, {0}, [&](size_t, int64_t b, int64_t peak) { return extra(b, peak); });
}

// Options for `budget` with no headroom, planning the first `precisions` of synth's.
inline mfp_options exact_options(const Synth &synth, uint64_t budget, int precisions) {
  mfp_options opts;
  mfp_options_init(&opts);
  opts.budget_bytes = budget;
  opts.headroom = 0.0;
  opts.precision_count = precisions;
  for (int q = 0; q < precisions; q++) opts.precisions[q] = synth.precisions[q].precision;
  return opts;
}

// A plan's summary and whether it keeps / checkpoints any layer.
struct Planned {
  mfp_plan_summary sm;
  bool keeps = false, checkpoints = false;
};

// Plans into *out; false when nothing fits (MFP_ERR_NO_FIT) and, as a test
// failure, on any other error.
inline bool plan_at(const mfp_profile *p, const mfp_options &opts, Planned *out) {
  mfp_plan_result *raw = nullptr;
  mfp_status st = mfp_plan(p, &opts, &raw);
  Plan plan(raw);
  if (st == MFP_ERR_NO_FIT) return false;
  EXPECT_EQ(st, MFP_OK) << mfp_last_error();
  if (st != MFP_OK) return false;
  mfp_plan_get_summary(plan.get(), &out->sm);
  for (size_t i = 0; i < mfp_plan_layer_count(plan.get()); i++) {
    mfp_plan_layer l;
    mfp_plan_get_layer(plan.get(), i, &l);
    out->keeps |= !l.decision.checkpoint;
    out->checkpoints |= l.decision.checkpoint;
  }
  return true;
}

}  // namespace planner_test

#endif  // MEMFIT_TEST_PLANNER_UTIL_H
