"""The profile and plan documents, with no torch: memfit.Profile and memfit.Plan
(JSON-ready dicts: load, check, save, the plan's table), the planner's own
profile check, and memfit.plan over the C planner (libmemfit_plan.so). What reads
or plans from files (`memfit report`, `memfit plan --profile`) imports this
module only, so it works where torch is not installed."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Union

from . import _lib
from ._lib import MemfitError, NothingFitsError

FORMAT, VERSION = "memfit-profile", 1
PLAN_FORMAT, PLAN_VERSION = "memfit-plan", 1
MFP_ERR_NO_FIT = 3  # planner/include/memfit/plan.h

_planner: Optional[ctypes.CDLL] = None


_PLANNER_PROTOTYPES = {
    "mfp_plan_json": (ctypes.c_int, [ctypes.c_char_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]),
    "mfp_free": (None, [ctypes.c_void_p]),
    "mfp_last_error": (ctypes.c_char_p, []),
    "mfp_version": (ctypes.c_char_p, []),
    "mfp_status_name": (ctypes.c_char_p, [ctypes.c_int]),
    "mfp_profile_parse": (ctypes.c_int, [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p)]),
    "mfp_profile_free": (None, [ctypes.c_void_p]),
}


def _load_planner() -> ctypes.CDLL:
    global _planner
    if _planner is None:
        _lib.lib()  # libmemfit.so first: the planner links it (memfit's one size parser)
        _planner = _lib.load_library("MEMFIT_PLAN_LIBRARY", "libmemfit_plan.so", "planner", _PLANNER_PROTOTYPES,
                                     "Build the checkout (cmake --build build) or set MEMFIT_PLAN_LIBRARY to its path.",
                                     mode=ctypes.DEFAULT_MODE)
    return _planner


def _slim(data: Dict[str, Any]) -> Dict[str, Any]:
    """The profile without its timelines (the planner does not read them)."""
    settings = data.get("settings")
    if not isinstance(settings, list):
        return data
    return dict(data, settings=[{k: v for k, v in s.items() if k != "timeline"} if isinstance(s, dict) else s
                                for s in settings])


def _time_source(plan: Dict[str, Any]) -> str:
    """Where the plan's times come from (planner/PLAN.md, "Step times")."""
    points = (plan.get("time_calibration") or {}).get("points") or []
    if not points:
        return "; times from the traced steps"
    batches = sorted({p["batch_size"] for p in points})
    return f"; times scaled to untraced steps at batch {batches[0]}..{batches[-1]}"


def check_profile(data: Dict[str, Any], what: str = "memfit") -> None:
    """Raise MemfitError naming the JSON path of what is wrong, by the planner's
    own parser: whatever reads a profile (report, plan) accepts the same ones."""
    lib = _load_planner()
    out = ctypes.c_void_p()
    if lib.mfp_profile_parse(json.dumps(_slim(data)).encode(), ctypes.byref(out)) != 0:
        raise MemfitError(f"{what}: {(lib.mfp_last_error() or b'').decode(errors='replace')}")
    lib.mfp_profile_free(out)



def predicted_allocated(d: Dict[str, Any]) -> int:
    """A plan's predicted allocated peak: the model's, plus what the checkpoint
    check and the ladder check keep it below its limit for (planner/PLAN.md)."""
    return (int(d.get("predicted_peak_bytes", 0)) + int(d.get("checkpoint_correction_bytes", 0))
            + int(d.get("ladder_correction_bytes", 0)))

class Plan:
    """A plan (planner/PLAN.md) as a JSON-ready dict."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.data = data

    @property
    def batch_size(self) -> int:
        return int(self.data["batch_size"])

    @property
    def layers(self) -> List[Dict[str, Any]]:
        return self.data["layers"]

    def decisions(self) -> Dict[str, Dict[str, Any]]:
        return {layer["name"]: layer for layer in self.layers}

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(json.dumps(self.data, indent=1) + "\n")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Plan":
        data = _lib.load_json_file(path, PLAN_FORMAT, PLAN_VERSION, "plan")
        batch = data.get("batch_size")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise MemfitError(f"memfit: {path}: batch_size must be a positive integer, not {batch!r}")
        if not isinstance(data.get("layers", []), list):
            raise MemfitError(f"memfit: {path}: layers must be a list")
        for i, layer in enumerate(data.get("layers", [])):
            if not isinstance(layer, dict):
                raise MemfitError(f"memfit: {path}: layers[{i}] must be an object")
            for key in ("name", "checkpoint", "precision"):
                if key not in layer:
                    raise MemfitError(f"memfit: {path}: layers[{i}] has no {key!r}")
            for key in ("checkpoint", "selective"):
                if not isinstance(layer.get(key, False), bool):
                    raise MemfitError(f"memfit: {path}: layers[{i}].{key} must be true or false, "
                                      f"not {layer[key]!r}")
        return cls(data)

    def table(self) -> str:
        from .reporting import human

        d = self.data
        lines = [
            f"memfit plan ({d['objective']}): batch {d['batch_size']}"
            + (f" x {d['grad_accumulation_steps']} accumulation steps = global batch {d['global_batch']}"
               if d.get("grad_accumulation_steps", 1) > 1 else ""),
            f"  predicted peak {human(predicted_allocated(d))} allocated"
            + (f" (the model's {human(d['predicted_peak_bytes'])}"
               + (f" + the checkpoint check's {human(d['checkpoint_correction_bytes'])}"
                  if d.get("checkpoint_correction_bytes") else "")
               + (f" + the ladder check's {human(d['ladder_correction_bytes'])}"
                  if d.get("ladder_correction_bytes") else "") + ")"
               if d.get("checkpoint_correction_bytes") or d.get("ladder_correction_bytes") else "")
            + ", "
            f"{human(d['predicted_reserved_bytes'])} reserved, of budget {human(d['budget_bytes'])} "
            f"(usable {human(d['usable_bytes'])}, headroom {100 * d['headroom']:.2f}%"
            + ((": 1% + the model's error)" if d["reserve_model"]["granule_bytes"] else
                ": 25% for segments + the model's error)") if d.get("headroom_rule") == "auto"
               else ", as given)" if d.get("headroom_rule") in (None, "option") else f": {d['headroom_rule']})"),
            f"  step {d['predicted_step_seconds'] * 1e3:.2f} ms, of which recompute "
            f"{d['predicted_recompute_seconds'] * 1e3:.2f} ms (+{d['recompute_overhead_percent']:.1f}% on the step "
            f"without it), "
            + (f"{d['throughput_samples_per_second']:.1f} samples/s predicted"
               if d.get("throughput_samples_per_second") is not None  # null: a predicted step of 0 s
               else "throughput not predicted (the profile's step times give a step of 0 s)")
            + _time_source(d),
            f"  model self-check error {100 * d['model_error']:.2f}% allocated, "
            f"{100 * d['model_error_reserved']:.2f}% reserved, "
            f"{100 * d.get('model_error_checkpoint', 0):.2f}% checkpointed   "
            f"no checkpointing fits batch {d['baselines']['no_checkpoint']['batch_size']}, "
            f"all checkpointed fits batch {d['baselines']['all_checkpoint']['batch_size']}",
        ]
        capped = (d.get("noise_scale") or {}).get("lr_scale_capped")
        if capped and d.get("lr_scale") and capped["value"] < d["lr_scale"]["value"]:
            lines.append(f"  suggestion: scale the learning rate by {capped['value']:.3g} "
                         f"(linear rule relative to the profiled batch, capped at the critical batch: "
                         f"uncapped {d['lr_scale']['value']:.3g})")
        elif d.get("lr_scale"):
            lines.append(f"  suggestion: scale the learning rate by {d['lr_scale']['value']:.3g} "
                         f"({d['lr_scale']['rule']} rule, relative to the profiled batch)")
        from .compute import table_lines

        lines.extend(table_lines(d))
        lines.append(f"  {'layer':<24}{'checkpoint':<12}{'precision':<10}")
        for layer in self.layers:
            how = ("selective" if layer.get("selective") else f"segment {layer['segment']}"
                   if layer.get("segment") is not None else "yes") if layer["checkpoint"] else "-"
            lines.append(f"  {layer['name'][:23]:<24}{how:<12}{layer['precision']:<10}")
        return "\n".join(lines)


class Profile:
    """A profile as a JSON-ready dict, with save / load / validation."""

    def __init__(self, data: Dict[str, Any]) -> None:
        self.data = data

    @property
    def settings(self) -> List[Dict[str, Any]]:
        return self.data["settings"]

    def setting(self, batch_size: int, precision: str = "fp32") -> Dict[str, Any]:
        for s in self.settings:
            if s["batch_size"] == batch_size and s["precision"] == precision:
                return s
        raise KeyError(f"no setting with batch {batch_size} and precision {precision}")

    def to_json(self, timeline: bool = True) -> str:
        data = self.data
        if not timeline:
            data = dict(data, settings=[{k: v for k, v in s.items() if k != "timeline"} for s in self.settings])
        return json.dumps(data, indent=1)

    def save(self, path: Union[str, Path]) -> None:
        Path(path).write_text(self.to_json() + "\n")

    @classmethod
    def load(cls, path: Union[str, Path]) -> "Profile":
        """Read and check a profile: the planner's parser must accept it (a
        MemfitError names the JSON path of what is wrong)."""
        data = _lib.load_json_file(path, FORMAT, VERSION, "profile")
        check_profile(data, f"memfit: {path}")
        return cls(data)

    def validate(self) -> None:
        """Check against the JSON schema (needs the jsonschema package)."""
        from .schema import validate_profile

        validate_profile(self.data)


def plan(
    profile: Union[Profile, str, Path, Dict[str, Any]],
    budget: Union[str, int],
    objective: str = "max-batch",
    global_batch: Optional[int] = None,
    precisions: Optional[Sequence[str]] = None,
    max_batch: Optional[int] = None,
    headroom: Optional[Union[float, str]] = None,
    selective: bool = True,
) -> Plan:
    """The plan that fits `budget` best for `objective` ("max-batch",
    "throughput" or "global-batch" with global_batch=N). headroom: the fraction of
    the budget kept free on top of the reserve model ("auto", the default: 1% + the
    model's self-check error; planner/PLAN.md). selective: False keeps every
    layer from being selectively checkpointed (by default a choice wherever the
    profile measured it)."""
    if isinstance(profile, (str, Path)):
        profile = Profile.load(profile)
    data = profile.data if isinstance(profile, Profile) else profile
    if not isinstance(data, dict):
        raise MemfitError(f"memfit.plan: a profile is a JSON object, not {type(data).__name__}")
    slim = _slim(data)
    options: Dict[str, Any] = {"budget": _lib.parse_size(budget, "budget") if not isinstance(budget, str) else budget,
                               "objective": objective}
    if global_batch is not None:
        options["global_batch"] = global_batch
    if precisions is not None:
        options["precisions"] = list(precisions)
    if max_batch is not None:
        options["max_batch"] = max_batch
    if not selective:
        options["selective"] = False
    if headroom is not None:
        # JSON has no NaN: checked here, or the planner would say "not valid JSON".
        if headroom != "auto" and not (isinstance(headroom, (int, float)) and not isinstance(headroom, bool)
                                       and 0 <= headroom < 1):
            raise MemfitError(f"memfit.plan: headroom must be a fraction in [0, 1) or 'auto', not {headroom!r}")
        options["headroom"] = headroom
    lib = _load_planner()
    out = ctypes.c_void_p()
    status = lib.mfp_plan_json(json.dumps(slim).encode(), json.dumps(options).encode(), ctypes.byref(out))
    if status != 0:
        message = (lib.mfp_last_error() or b"").decode(errors="replace")
        cls = NothingFitsError if status == MFP_ERR_NO_FIT else MemfitError
        raise cls(f"memfit.plan: {message}")
    try:
        text = ctypes.string_at(out.value).decode()
    finally:
        lib.mfp_free(out)
    return Plan(json.loads(text))
