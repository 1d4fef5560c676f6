"""memfit's part of PYTORCH_CUDA_ALLOC_CONF / PYTORCH_ALLOC_CONF: finding
`backend:memfit`, taking memfit's keys out (PyTorch rejects keys and backends it
does not know) and turning them into MEMFIT_CONF. String work, no torch; the keys
are read from libmemfit.so's option table."""

from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

ENV_VARS = ("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_ALLOC_CONF")


def memfit_keys() -> Tuple[str, ...]:
    """The keys memfit takes out of PyTorch's variables: its option table's (read
    from libmemfit.so, never copied here) less those that select the backend
    (always cuda there). Raises MemfitError when the library cannot be loaded."""
    from . import _lib

    lib = _lib.lib()
    return tuple(lib.mf_options_key(i).decode() for i in range(lib.mf_options_count())
                 if not lib.mf_options_selects_backend(i))


def _is_backend_memfit(item: str) -> bool:
    key, _, val = item.partition(":")
    return key.strip().lower() == "backend" and val.strip().lower() == "memfit"  # "backend: Memfit" too


def asks_for_memfit(value: str) -> bool:
    """Whether a PyTorch alloc-conf value names backend:memfit (no library needed)."""
    return any(_is_backend_memfit(item) for item in value.split(","))


def split_conf(value: str, keys: Optional[Sequence[str]] = None) -> Tuple[bool, List[str], List[str]]:
    """(memfit asked?, memfit's 'key:value' items, the items left for PyTorch).
    `keys` defaults to memfit_keys(), read only when memfit is asked for."""
    items = [i.strip() for i in value.split(",") if i.strip()]
    if not any(_is_backend_memfit(item) for item in items):
        return False, [], items  # without backend:memfit, nothing is memfit's: leave the variable alone
    keys = memfit_keys() if keys is None else keys
    mine: List[str] = []
    rest: List[str] = []
    for item in items:
        key, _, val = item.partition(":")
        key, val = key.strip(), val.strip()
        if _is_backend_memfit(item):
            continue  # never left to PyTorch, which knows no such backend
        if key in keys:
            mine.append(f"{key}:{val}")
        else:
            rest.append(item)
    return True, mine, rest


def drop_backend_memfit(environ: Optional[Dict[str, str]] = None) -> None:
    """Take only `backend:memfit` out of PyTorch's variables (when memfit cannot
    load and so cannot tell its keys from PyTorch's)."""
    env = os.environ if environ is None else environ
    for name in ENV_VARS:
        if name in env and asks_for_memfit(env[name]):
            rest = [i.strip() for i in env[name].split(",") if i.strip() and not _is_backend_memfit(i)]
            if rest:
                env[name] = ",".join(rest)
            else:
                del env[name]


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
