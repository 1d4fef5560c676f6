"""memfit's part of PYTORCH_CUDA_ALLOC_CONF / PYTORCH_ALLOC_CONF: finding
`backend:memfit`, taking memfit's keys out (PyTorch rejects keys and backends it
does not know) and turning them into MEMFIT_CONF. Pure string work, no torch."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Tuple

ENV_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")
# The keys memfit takes out of PyTorch's variables: its option table minus
# `backend` (always cuda there) and `devices` (a simulated backend's).
MEMFIT_KEYS = (
    "capacity",
    "max_split_size",
    "large_segment",
    "large_split",
    "segment_round",
    "merge_segments",
    "vmm",
    "vmm_granule",
    "event_log",
    "check",
)


def split_conf(value: str) -> Tuple[bool, List[str], List[str]]:
    """(memfit asked?, memfit's 'key:value' items, the items left for PyTorch)."""
    asked = False
    mine: List[str] = []
    rest: List[str] = []
    for item in value.split(","):
        item = item.strip()
        if not item:
            continue
        key, _, val = item.partition(":")
        key, val = key.strip(), val.strip()
        if key.lower() == "backend" and val.lower() == "memfit":  # "backend: Memfit" too: never left to PyTorch
            asked = True
        elif key in MEMFIT_KEYS:
            mine.append(f"{key}:{val}")
        else:
            rest.append(item)
    if not asked:  # without backend:memfit, nothing is memfit's: leave the variable alone
        return False, [], [i.strip() for i in value.split(",") if i.strip()]
    return True, mine, rest


def take_memfit_conf(environ: Optional[Dict[str, str]] = None) -> Optional[str]:
    """If a PyTorch alloc-conf variable asks for backend:memfit, remove memfit's
    items from it (deleting the variable when nothing is left), append memfit's
    keys to MEMFIT_CONF, and return them ('' when there are none). None when no
    variable asks for memfit."""
    env = os.environ if environ is None else environ
    found = False
    collected: List[str] = []
    for name in ENV_VARS:
        value = env.get(name)
        if value is None:
            continue
        asked, mine, rest = split_conf(value)
        if not asked:
            continue
        found = True
        collected.extend(mine)
        if rest:
            env[name] = ",".join(rest)
        else:
            del env[name]
    if not found:
        return None
    conf = ",".join(collected)
    if conf:
        previous = env.get("MEMFIT_CONF", "")
        env["MEMFIT_CONF"] = f"{previous},{conf}" if previous else conf
    return conf
