"""A procedural compositional image set with captions and an exact detector of what was drawn.

Each image shows two flat-coloured shapes on a black background, placed so that one
relation holds between them, and its caption says so: ``"a red circle above a blue
square"``. Because the renderer is known, text fidelity can be measured without any
pretrained network: :func:`detect_objects` finds every drawn object (its colour, shape and
centre) and :func:`score_scenes` compares what it found with what a caption asked for,
reporting colours (attributes), shapes (objects) and the relation separately, as
compositional text-to-image benchmarks do (T2I-CompBench's attribute-binding and spatial
categories, measured here exactly instead of with a detector network).

Vocabulary: 6 colours, 3 shapes, 4 relations; the two objects of a scene have different
colours, so a colour names one object. A scene ``A above B`` is also ``B below A``: the
dataset describes each image in either order (drawn at random), so the encoder must read
the relation word, not the word order. :func:`held_out_pairs` sets aside a fixed part of
the object pairs (e.g. every scene with a red circle and a blue square, in any order and
relation): the training split never shows them, and the held-out split shows only them.
Each object and each colour-shape binding is still seen in training, so the held-out
split measures composition, not new words.

Geometry (image side ``size``, default 32): a circle is the pixels within ``r + 1/2`` of
its centre, a square the pixels within ``r`` in both axes, a triangle points up with its apex
``r`` above the centre and a base ``2 r + 1`` pixels wide ``r`` below it; centres and
``r`` are integers, so an object's bounding box gives back its centre and ``r`` exactly
and the detector's template match is exact on the renderer's own images.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from diffjax._checks import check_int

__all__ = [
    "COLORS",
    "RELATIONS",
    "SHAPES",
    "DetectedObject",
    "Scene",
    "ShapeObject",
    "all_pairs",
    "detect_objects",
    "held_out_pairs",
    "make_shapes_dataset",
    "parse_caption",
    "relation_between",
    "render_scene",
    "sample_scenes",
    "score_scenes",
]

# Colour name -> RGB in [-1, 1] (the corners of the colour cube other than black and white).
COLORS: dict[str, tuple[float, float, float]] = {
    "red": (1.0, -1.0, -1.0),
    "green": (-1.0, 1.0, -1.0),
    "blue": (-1.0, -1.0, 1.0),
    "yellow": (1.0, 1.0, -1.0),
    "magenta": (1.0, -1.0, 1.0),
    "cyan": (-1.0, 1.0, 1.0),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("above", "below", "left of", "right of")
_RELATION_WORDS = {
    "above": "above", "below": "below", "left of": "to the left of", "right of": "to the right of"
}
_INVERSE = {"above": "below", "below": "above", "left of": "right of", "right of": "left of"}
_BACKGROUND = (-1.0, -1.0, -1.0)
_MIN_RADIUS, _MAX_RADIUS = 3, 5
_GAP = 2  # pixels at least between the two objects' boxes along the relation's axis


class ShapeObject(NamedTuple):
    """One object of a scene: a colour name and a shape name."""

    color: str
    shape: str

    def words(self) -> str:
        """``"red circle"``."""
        return f"{self.color} {self.shape}"


class Scene(NamedTuple):
    """``first`` stands in ``relation`` to ``second`` (``"above"``, ``"left of"``, ...)."""

    first: ShapeObject
    relation: str
    second: ShapeObject

    def caption(self) -> str:
        """The caption: ``"a red circle above a blue square"``, ``"... to the left of ..."``."""
        words = _RELATION_WORDS[self.relation]
        return f"a {self.first.words()} {words} a {self.second.words()}"

    def inverse(self) -> Scene:
        """The same scene said the other way round (``B below A`` for ``A above B``)."""
        return Scene(self.second, _INVERSE[self.relation], self.first)

    def pair(self) -> frozenset[ShapeObject]:
        """The unordered pair of objects (what :func:`held_out_pairs` holds out)."""
        return frozenset((self.first, self.second))


class DetectedObject(NamedTuple):
    """An object found in an image: its colour, best-matching shape, centre and match."""

    color: str
    shape: str
    center: tuple[float, float]  # (row, column), pixel units
    num_pixels: int
    match: float  # intersection over union with the chosen shape's template


def all_objects() -> list[ShapeObject]:
    """Every colour-shape object, colours first (18)."""
    return [ShapeObject(c, s) for c in COLORS for s in SHAPES]


def all_pairs() -> list[frozenset[ShapeObject]]:
    """Every unordered pair of objects with different colours (135), in a fixed order."""
    objects = all_objects()
    return [
        frozenset((a, b)) for a, b in itertools.combinations(objects, 2) if a.color != b.color
    ]


def held_out_pairs(fraction: float = 0.1, seed: int = 0) -> frozenset[frozenset[ShapeObject]]:
    """A fixed set of object pairs that the training split never shows.

    Args:
      fraction: The share of :func:`all_pairs` to hold out, in ``(0, 1)``.
      seed: Which pairs (a permutation seed); the default is the project's split.

    Returns:
      The held-out pairs. Every single object (and so every colour-shape binding) still
      occurs in some training pair, which is checked.

    Raises:
      ValueError: If ``fraction`` is outside ``(0, 1)`` or holds out some object entirely.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"fraction={fraction} must be in (0, 1).")
    pairs = all_pairs()
    order = np.random.default_rng(seed).permutation(len(pairs))
    count = max(1, round(fraction * len(pairs)))
    held = frozenset(pairs[i] for i in order[:count])
    seen = {obj for pair in pairs if pair not in held for obj in pair}
    if seen != set(all_objects()):
        raise ValueError(
            f"fraction={fraction} holds out every pair of some object; use a smaller one."
        )
    return held


def sample_scenes(
    num_scenes: int, rng: np.random.Generator, *, split: str = "train", fraction: float = 0.1
) -> list[Scene]:
    """Draws scenes uniformly over the pairs of a split, relations and orders.

    Args:
      num_scenes: How many.
      rng: The random generator.
      split: ``"train"`` (the pairs not held out) or ``"heldout"`` (only the held-out ones).
      fraction: The held-out share (:func:`held_out_pairs`).

    Returns:
      The scenes; each is said in a random one of its two orders.
    """
    check_int("num_scenes", num_scenes, minimum=0)
    held = held_out_pairs(fraction)
    if split == "train":
        pairs = [p for p in all_pairs() if p not in held]
    elif split == "heldout":
        pairs = [p for p in all_pairs() if p in held]
    else:
        raise ValueError(f"split={split!r}: expected 'train' or 'heldout'.")
    scenes = []
    for _ in range(num_scenes):
        a, b = sorted(pairs[rng.integers(len(pairs))])
        if rng.integers(2):
            a, b = b, a
        scenes.append(Scene(a, RELATIONS[rng.integers(len(RELATIONS))], b))
    return scenes


def _shape_mask(shape: str, rows: np.ndarray, cols: np.ndarray, radius: float) -> np.ndarray:
    """Pixels of ``shape`` centred at the origin of the offset grids ``rows``, ``cols``."""
    if shape == "circle":
        return rows**2 + cols**2 <= (radius + 0.5) ** 2 - 1e-9
    if shape == "square":
        return (np.abs(rows) <= radius) & (np.abs(cols) <= radius)
    if shape == "triangle":  # apex at row -radius, base (2r + 1 wide) at row +radius
        return (np.abs(rows) <= radius) & (np.abs(cols) <= (rows + radius) / 2.0 + 1e-9)
    raise ValueError(f"shape={shape!r}: expected one of {SHAPES}.")


def _draw(image: np.ndarray, obj: ShapeObject, center: tuple[int, int], radius: int) -> None:
    size_h, size_w = image.shape[:2]
    rows = np.arange(size_h)[:, None] - center[0]
    cols = np.arange(size_w)[None, :] - center[1]
    image[_shape_mask(obj.shape, rows, cols, radius)] = COLORS[obj.color]


def _layout(
    relation: str, radii: tuple[int, int], size: int, rng: np.random.Generator
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Integer centres (row, col) of the two objects with ``relation`` between them."""
    r1, r2 = radii
    # Along the relation's axis: first before second (above / left of), boxes _GAP apart.
    span = r1 + r2 + 1 + _GAP  # centre distance at least this
    lo1, hi1 = r1, size - 1 - r1
    while True:
        along1 = int(rng.integers(lo1, hi1 + 1))
        lo2 = max(along1 + span, r2)
        hi2 = size - 1 - r2
        if lo2 <= hi2:
            along2 = int(rng.integers(lo2, hi2 + 1))
            break
    # Across: both near the same line, so the relation is unambiguous.
    across1 = int(rng.integers(max(r1, r2), size - max(r1, r2)))
    shift = int(rng.integers(-2, 3))
    across2 = int(np.clip(across1 + shift, r2, size - 1 - r2))
    if relation in ("below", "right of"):
        along1, along2 = along2, along1
    if relation in ("above", "below"):
        return (along1, across1), (along2, across2)
    return (across1, along1), (across2, along2)


def render_scene(scene: Scene, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """Draws ``scene`` at a random position and size.

    Args:
      scene: What to draw.
      rng: The random generator (positions and radii).
      size: The image side in pixels (at least 20).

    Returns:
      A ``(size, size, 3)`` float32 image in ``[-1, 1]``.
    """
    check_int("size", size, minimum=20)
    if scene.relation not in RELATIONS:
        raise ValueError(f"relation={scene.relation!r}: expected one of {RELATIONS}.")
    if scene.first.color == scene.second.color:
        raise ValueError(f"the two objects of {scene.caption()!r} must have different colours.")
    radii = tuple(int(r) for r in rng.integers(_MIN_RADIUS, _MAX_RADIUS + 1, size=2))
    centers = _layout(scene.relation, radii, size, rng)
    image = np.empty((size, size, 3), np.float32)
    image[:] = _BACKGROUND
    for obj, center, radius in zip((scene.first, scene.second), centers, radii, strict=True):
        _draw(image, obj, center, radius)
    return image


def make_shapes_dataset(
    num_images: int, *, split: str = "train", seed: int = 0, size: int = 32,
    fraction: float = 0.1,
) -> tuple[np.ndarray, list[str], list[Scene]]:
    """Renders ``num_images`` captioned scenes of a split.

    Args:
      num_images: How many images.
      split: ``"train"`` or ``"heldout"`` (see :func:`held_out_pairs`).
      seed: Seeds the scenes and their layouts.
      size: Image side.
      fraction: The held-out share of object pairs.

    Returns:
      ``(images, captions, scenes)``: ``(N, size, size, 3)`` float32 images in ``[-1, 1]``,
      each image's caption, and each caption's :class:`Scene`.
    """
    rng = np.random.default_rng([seed, 0 if split == "train" else 1])
    scenes = sample_scenes(num_images, rng, split=split, fraction=fraction)
    images = np.stack([render_scene(s, rng, size) for s in scenes]) if scenes else (
        np.zeros((0, size, size, 3), np.float32)
    )
    return images, [s.caption() for s in scenes], scenes


_COLOR_WORDS = "|".join(COLORS)
_SHAPE_WORDS = "|".join(SHAPES)
_CAPTION = re.compile(
    rf"^\s*an?\s+({_COLOR_WORDS})\s+({_SHAPE_WORDS})\s+(?:is\s+)?"
    rf"(above|below|(?:to\s+the\s+)?left\s+of|(?:to\s+the\s+)?right\s+of)\s+"
    rf"an?\s+({_COLOR_WORDS})\s+({_SHAPE_WORDS})\s*\.?\s*$",
    re.IGNORECASE,
)


def parse_caption(caption: str) -> Scene:
    """The :class:`Scene` a caption asks for (``"a red circle above a blue square"``).

    Accepts ``"is above"`` and ``"to the left of"`` as well, in any letter case.

    Raises:
      ValueError: If the caption is not of that form (the message shows the form and the
        words it knows).
    """
    match = _CAPTION.match(caption)
    if not match:
        raise ValueError(
            f"caption {caption!r} is not of the form 'a <colour> <shape> <relation> a "
            f"<colour> <shape>' with colours {tuple(COLORS)}, shapes {SHAPES} and relations "
            f"{RELATIONS}."
        )
    c1, s1, relation, c2, s2 = (g.lower() for g in match.groups())
    relation = re.sub(r"^to\s+the\s+", "", re.sub(r"\s+", " ", relation))
    return Scene(ShapeObject(c1, s1), relation, ShapeObject(c2, s2))


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """Boolean masks of the 4-connected components of ``mask``, largest first."""
    from scipy import ndimage  # scikit-learn's own dependency; imported only when detecting

    labels, count = ndimage.label(mask)
    parts = [labels == i for i in range(1, count + 1)]
    return sorted(parts, key=lambda m: -int(m.sum()))


def _best_shape(component: np.ndarray) -> tuple[str, float]:
    """The shape whose template, fitted to the component's box, overlaps it most (IoU)."""
    rows, cols = np.nonzero(component)
    top, bottom, left, right = rows.min(), rows.max(), cols.min(), cols.max()
    center = ((top + bottom) / 2.0, (left + right) / 2.0)
    radius = max(bottom - top, right - left) / 2.0
    grid_r = np.arange(component.shape[0])[:, None] - center[0]
    grid_c = np.arange(component.shape[1])[None, :] - center[1]
    best, best_iou = SHAPES[0], -1.0
    for shape in SHAPES:
        template = _shape_mask(shape, grid_r, grid_c, radius)
        iou = float((template & component).sum()) / float((template | component).sum())
        if iou > best_iou:
            best, best_iou = shape, iou
    return best, best_iou


def detect_objects(image: np.ndarray, *, min_pixels: int = 5) -> list[DetectedObject]:
    """Finds the coloured objects in one image.

    Every pixel is given the nearest of the six colours and the background if it lies
    within 1.0 of it (half the distance between two colours of the cube), else none; for
    each colour with at least ``min_pixels`` such pixels, its largest 4-connected
    component is the object: its shape is the template (circle, square or triangle,
    fitted to the component's bounding box) with the highest intersection over union,
    its centre the component's centroid.

    Args:
      image: ``(H, W, 3)`` in ``[-1, 1]`` (a generated sample: values outside are clipped).
      min_pixels: Smaller colour areas are not objects (noise).

    Returns:
      The objects found, at most one per colour, in the order of :data:`COLORS`.
    """
    image = np.asarray(image, np.float32)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"image must be (H, W, 3), got shape {image.shape}.")
    palette = np.asarray([_BACKGROUND, *COLORS.values()], np.float32)
    distance = np.linalg.norm(np.clip(image, -1, 1)[..., None, :] - palette, axis=-1)
    nearest = np.argmin(distance, axis=-1)
    close = np.min(distance, axis=-1) <= 1.0
    found = []
    for index, color in enumerate(COLORS, start=1):
        mask = close & (nearest == index)
        if mask.sum() < min_pixels:
            continue
        component = _components(mask)[0]
        if component.sum() < min_pixels:
            continue
        shape, iou = _best_shape(component)
        rows, cols = np.nonzero(component)
        found.append(DetectedObject(color, shape, (float(rows.mean()), float(cols.mean())),
                                    int(component.sum()), iou))
    return found


def relation_between(first: DetectedObject, second: DetectedObject) -> str:
    """The relation of ``first`` to ``second`` along the axis their centres differ most in."""
    d_row = first.center[0] - second.center[0]
    d_col = first.center[1] - second.center[1]
    if abs(d_row) >= abs(d_col):
        return "above" if d_row < 0 else "below"
    return "left of" if d_col < 0 else "right of"


def score_scenes(
    images: np.ndarray | Sequence[np.ndarray], scenes: Sequence[Scene | str], *,
    min_pixels: int = 5,
) -> dict[str, float]:
    """How often the images show what their scenes (or captions) ask for.

    Per image, with ``A`` and ``B`` the scene's two objects:

    * ``colors``: an object of A's colour and one of B's were found (the attributes);
    * ``shapes``: those objects have A's and B's shapes (the objects, bound to their
      colours; 0 where a colour is missing);
    * ``relation``: A's object stands in the scene's relation to B's (0 where missing);
    * ``exact``: all three, and no object of a third colour.

    Args:
      images: ``(N, H, W, 3)`` images in ``[-1, 1]``.
      scenes: ``N`` scenes or captions (parsed with :func:`parse_caption`).
      min_pixels: Passed to :func:`detect_objects`.

    Returns:
      The four fractions over the ``N`` images, and ``count``.
    """
    if len(images) != len(scenes):
        raise ValueError(f"{len(images)} images but {len(scenes)} scenes: one scene per image.")
    if not len(scenes):
        raise ValueError("no images to score.")
    totals = dict.fromkeys(("colors", "shapes", "relation", "exact"), 0)
    for image, scene in zip(images, scenes, strict=True):
        if isinstance(scene, str):
            scene = parse_caption(scene)
        by_color = {obj.color: obj for obj in detect_objects(image, min_pixels=min_pixels)}
        a, b = by_color.get(scene.first.color), by_color.get(scene.second.color)
        colors = a is not None and b is not None
        shapes = colors and a.shape == scene.first.shape and b.shape == scene.second.shape
        relation = colors and relation_between(a, b) == scene.relation
        totals["colors"] += colors
        totals["shapes"] += shapes
        totals["relation"] += relation
        totals["exact"] += shapes and relation and len(by_color) == 2
    n = len(scenes)
    return {**{k: v / n for k, v in totals.items()}, "count": n}
