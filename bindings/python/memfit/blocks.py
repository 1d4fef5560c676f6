"""The units the planner decides on: a model's repeated blocks wherever they
sit in the module tree, and the rest of the model grouped into units of its
own (embeddings, final norm, head). The rule is documented in
bindings/python/README.md ("Which layers memfit plans"); a user overrides it
with Job(blocks=...) or --blocks REGEX."""

from __future__ import annotations

import re
from typing import Iterable, List, Optional, Sequence, Set, Tuple, Union

import torch

from ._lib import MemfitError

Units = List[Tuple[str, torch.nn.Module]]
BlockSpec = Union[None, str, Sequence[str]]

_CONTAINERS = (torch.nn.ModuleList, torch.nn.ModuleDict, torch.nn.Sequential)


def _is_torch_layer(module: torch.nn.Module) -> bool:
    """A building block of torch.nn itself (Linear, Conv2d, LayerNorm, ...): never
    a repeated block on its own; a Sequential of them is one unit."""
    return type(module).__module__.startswith("torch.")


def _has_parameters(module: torch.nn.Module) -> bool:
    return next(module.parameters(), None) is not None


def repeated_block_classes(model: torch.nn.Module) -> Set[type]:
    """Classes of the model's repeated blocks: those a Hugging Face model names in
    `_no_split_modules` (what its device maps and FSDP wrapping keep whole), and
    any class not from torch.nn that has parameters and occurs at least twice
    among the children of one ModuleList, ModuleDict or Sequential (transformer
    layers, a U-Net's stages)."""
    named: Set[str] = set()
    for m in model.modules():
        names = getattr(m, "_no_split_modules", None)
        if isinstance(names, (list, tuple, set)):
            named.update(n for n in names if isinstance(n, str))
    found: Set[type] = set()
    for m in model.modules():
        if type(m).__name__ in named and not _is_torch_layer(m):
            found.add(type(m))
        if isinstance(m, _CONTAINERS):
            counts: dict = {}
            for child in m.children():
                if not _is_torch_layer(child) and _has_parameters(child):
                    counts[type(child)] = counts.get(type(child), 0) + 1
            found.update(cls for cls, n in counts.items() if n >= 2)
    return found


def _matcher(spec: BlockSpec):
    """A predicate on module paths from Job(blocks=...) / --blocks: a regular
    expression matched against the whole path, or a list of paths or regular
    expressions."""
    if isinstance(spec, str):
        patterns = [spec]
    elif isinstance(spec, (list, tuple)) and spec and all(isinstance(p, str) for p in spec):
        patterns = list(spec)
    else:
        raise MemfitError(f"memfit: blocks must be a regular expression or a non-empty list of module paths, "
                          f"not {spec!r}")
    compiled = []
    for p in patterns:
        try:
            compiled.append(re.compile(p))
        except re.error as e:
            raise MemfitError(f"memfit: blocks: {p!r} is not a regular expression: {e}") from None
    return lambda path: any(c.fullmatch(path) for c in compiled)


def find_units(model: torch.nn.Module, blocks: BlockSpec = None) -> Units:
    """The units, in module order (the profile orders them by execution):

    - a block is a module whose path `blocks` matches when given, else an
      instance of a repeated block class (repeated_block_classes); the
      outermost one counts when blocks nest;
    - walking down from the root, a child that is a block is a unit; a child
      that contains a block, or that is a ModuleList / ModuleDict (which have
      no forward), is walked into; any other child is a unit (embeddings, a
      final norm, a head, a Sequential stage);
    - a module reachable by two paths (tied or shared) is a unit once, under
      its first path;
    - a root whose units would be a single module with children is walked
      into (a model that wraps one Sequential or one body).
    """
    if blocks is not None:
        matches = _matcher(blocks)
        is_block = lambda path, m: bool(path) and matches(path)  # noqa: E731
    else:
        classes = repeated_block_classes(model)
        is_block = lambda path, m: type(m) in classes  # noqa: E731
    block_ids: Set[int] = set()
    for path, m in model.named_modules(remove_duplicate=False):
        if is_block(path, m):
            block_ids.add(id(m))
    if blocks is not None and not block_ids:
        raise MemfitError(f"memfit: blocks {blocks!r} matches no module of the model "
                          f"({type(model).__name__}; its modules are e.g. "
                          f"{', '.join(n for n, _ in list(model.named_modules())[1:6])})")
    holds: dict = {}

    def contains_block(m: torch.nn.Module) -> bool:
        key = id(m)
        if key not in holds:
            holds[key] = any(id(c) in block_ids or contains_block(c) for c in m.children())
        return holds[key]

    seen: Set[int] = set()

    def walk(prefix: str, module: torch.nn.Module) -> Units:
        out: Units = []
        for name, child in module.named_children():
            if id(child) in seen:
                continue
            path = f"{prefix}.{name}" if prefix else name
            if id(child) in block_ids:
                seen.add(id(child))
                out.append((path, child))
            elif isinstance(child, (torch.nn.ModuleList, torch.nn.ModuleDict)) or contains_block(child):
                seen.add(id(child))
                out.extend(walk(path, child))
            else:
                seen.add(id(child))
                out.append((path, child))
        return out

    units = walk("", model)
    while len(units) == 1 and id(units[0][1]) not in block_ids and next(units[0][1].children(), None) is not None:
        units = walk(*units[0])
    if not units:
        raise MemfitError(f"memfit.profile: the model ({type(model).__name__}) has no submodules to profile as layers")
    return units


def describe(units: Iterable[Tuple[str, torch.nn.Module]]) -> str:
    """'transformer.h.0..11 (GPT2Block), lm_head (Linear)': runs of numbered
    siblings of one class shortened, for messages and progress."""
    parts: List[str] = []
    run: Optional[Tuple[str, int, int, str]] = None  # prefix, first, last, class
    for path, m in units:
        head, _, tail = path.rpartition(".")
        cls = type(m).__name__
        if tail.isdigit() and run and run[0] == head and run[3] == cls and int(tail) == run[2] + 1:
            run = (head, run[1], int(tail), cls)
            continue
        if run:
            parts.append(_run_text(run))
            run = None
        if tail.isdigit():
            run = (head, int(tail), int(tail), cls)
        else:
            parts.append(f"{path} ({cls})")
    if run:
        parts.append(_run_text(run))
    return ", ".join(parts)


def _run_text(run: Tuple[str, int, int, str]) -> str:
    head, first, last, cls = run
    prefix = f"{head}." if head else ""
    span = f"{first}" if first == last else f"{first}..{last}"
    return f"{prefix}{span} ({cls})"
