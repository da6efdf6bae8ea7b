"""Input augmentations, by name: a grid axis (``augmentations`` in a grid entry).

An augmentation is a pure function of (replica key, step, example index) and the batch's
float images: fixed by the seed, different between epochs, the same after a resume. It is
applied in the train step on top of the replica's randomization, never to test images.
Each replica's augmentation is a traced index into the names the grid uses, so replicas
with different augmentations train in one program.

Registered so far: ``none``. A new one is a function ``(key, step, indices, images) ->
images`` added to ``_AUGMENTATIONS``.
"""

from __future__ import annotations

import jax

from zhang.errors import UsageError


def _none(key, step, indices, images):
  del key, step, indices
  return images


_AUGMENTATIONS = {"none": _none}
NAMES = tuple(_AUGMENTATIONS)


def check_name(name) -> str:
  if name not in _AUGMENTATIONS:
    raise UsageError(f"unknown augmentation {name!r}: choose one of {', '.join(NAMES)}")
  return name


def used(names) -> tuple[str, ...]:
  """The distinct augmentations of a grid's replicas, in registry order."""
  names = set(names)
  return tuple(n for n in NAMES if n in names) or ("none",)


def index(names: tuple[str, ...], name: str) -> int:
  """A replica's augmentation as its index into the grid's ``used`` names."""
  return names.index(name)


def apply(names: tuple[str, ...], which, key, step, indices, images):
  """Images (B, H, W, C) of one replica augmented by ``names[which]`` (``which`` traced)."""
  fns = [_AUGMENTATIONS[n] for n in names]
  if len(fns) == 1:  # the grid uses one: no branch to compile
    return fns[0](key, step, indices, images)
  return jax.lax.switch(which, fns, key, step, indices, images)
