"""Draw the Teams app icons for the Fusion Products bot.

    python manifest/icons.py            # rewrites manifest/color.png and manifest/outline.png

The glyph is a stack of three product layers (the platform's stack of number ranges,
seats, channels, licences) under two signal arcs (telecom).  Teams wants:

* ``color.png``: 192x192, full colour, the symbol on a solid background;
* ``outline.png``: 32x32, transparent background, the symbol in pure white only (every
  pixel is white; anti-aliasing is carried by the alpha channel alone).  At 32 px the
  signal arcs blur into a blob, so the outline shows the layer stack alone.

Shapes are drawn at a multiple of the final size and box-filtered down, so edges are
smooth and the output is deterministic for a given Pillow version.  Needs Pillow, as a
development-time tool only: the committed PNGs are what the app package uses.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent

# Keep BACKGROUND in step with "accentColor" in manifest.template.json.
BACKGROUND = (14, 90, 138)  # #0E5A8A, deep telecom blue
WHITE = (255, 255, 255)
LIGHT_CYAN = (124, 207, 242)
AMBER = (255, 179, 71)

Point = tuple[float, float]
Fill = int | tuple[int, int, int]  # a grey level (mask) or an RGB colour


@dataclass(frozen=True)
class Glyph:
    """Proportions of the glyph, in units of the top layer's width (= 1)."""

    half_height: float = 0.2  # half height of the top rhombus
    gap: float = 0.08  # vertical gap between layers
    thickness: float = 0.1  # vertical thickness of the lower two layers
    arcs: tuple[float, ...] = (0.14, 0.27)  # radii of the signal arcs; () for none
    stroke: float = 0.075  # width of the arcs
    dot: float = 0.048  # radius of the dot under the arcs; 0 for none
    signal_gap: float = 0.06  # between the dot and the apex of the top layer

    def shapes(self) -> tuple[list[Point], list[Point], list[Point]]:
        """Top rhombus, middle and bottom chevrons; the top apex is at (0.5, 0)."""
        h = self.half_height
        top = [(0.0, h), (0.5, 0.0), (1.0, h), (0.5, 2 * h)]

        def chevron(y0: float) -> list[Point]:
            t = self.thickness
            return [
                (0.0, y0),
                (0.5, y0 + h),
                (1.0, y0),
                (1.0, y0 + t),
                (0.5, y0 + h + t),
                (0.0, y0 + t),
            ]

        middle = chevron(h + self.gap)
        bottom = chevron(h + 2 * self.gap + self.thickness)
        return top, middle, bottom

    def signal_centre(self) -> Point:
        return (0.5, -self.signal_gap - self.dot)

    def bounds(self) -> tuple[float, float, float, float]:
        points = [p for shape in self.shapes() for p in shape]
        xs, ys = [p[0] for p in points], [p[1] for p in points]
        top = min(ys)
        if self.arcs or self.dot:
            cy = self.signal_centre()[1]
            top = min(top, cy - self.dot, cy - max(self.arcs, default=0) - self.stroke / 2)
        return min(xs), top, max(xs), max(ys)


def draw_glyph(
    draw: ImageDraw.ImageDraw,
    box: float,
    margin: float,
    glyph: Glyph,
    fills: Sequence[Fill],
) -> None:
    """Draw ``glyph`` centred in a ``box``-pixel square with ``margin`` pixels around it.

    ``fills`` are the top layer, middle layer, bottom layer and signal colours.
    """
    x0, y0, x1, y1 = glyph.bounds()
    scale = (box - 2 * margin) / max(x1 - x0, y1 - y0)
    ox = (box - (x1 - x0) * scale) / 2 - x0 * scale
    oy = (box - (y1 - y0) * scale) / 2 - y0 * scale

    def px(points: Sequence[Point]) -> list[Point]:
        return [(ox + x * scale, oy + y * scale) for x, y in points]

    top_fill, middle_fill, bottom_fill, signal_fill = fills
    top, middle, bottom = glyph.shapes()
    draw.polygon(px(bottom), fill=bottom_fill)
    draw.polygon(px(middle), fill=middle_fill)
    draw.polygon(px(top), fill=top_fill)

    [(cx, cy)] = px([glyph.signal_centre()])
    for radius in glyph.arcs:
        r = radius * scale
        draw.arc(
            [cx - r, cy - r, cx + r, cy + r],
            start=232,
            end=308,
            fill=signal_fill,
            width=round(glyph.stroke * scale),
        )
    if glyph.dot:
        d = glyph.dot * scale
        draw.ellipse([cx - d, cy - d, cx + d, cy + d], fill=signal_fill)


def make_color(size: int = 192, supersample: int = 4) -> Image.Image:
    """192x192 RGB: white / cyan / amber layers and white signal on the accent colour."""
    big = size * supersample
    image = Image.new("RGB", (big, big), BACKGROUND)
    # A 36 px margin keeps the symbol inside Teams' rounded-corner mask.
    draw_glyph(
        ImageDraw.Draw(image), big, 36 * supersample, Glyph(), [WHITE, LIGHT_CYAN, AMBER, WHITE]
    )
    return image.reduce(supersample)


def make_outline(size: int = 32, supersample: int = 8) -> Image.Image:
    """32x32 RGBA: pure white everywhere, the symbol drawn in the alpha channel only."""
    big = size * supersample
    mask = Image.new("L", (big, big), 0)
    glyph = Glyph(gap=0.11, thickness=0.12, arcs=(), dot=0)
    draw_glyph(ImageDraw.Draw(mask), big, 2 * supersample, glyph, [255, 255, 255, 255])
    image = Image.new("RGBA", (size, size), WHITE + (0,))
    image.putalpha(mask.reduce(supersample))
    return image


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Draw manifest/color.png and manifest/outline.png."
    )
    parser.add_argument("--out-dir", type=Path, default=HERE, help="where to write the PNGs")
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    for name, image in (("color.png", make_color()), ("outline.png", make_outline())):
        path = args.out_dir / name
        image.save(path, optimize=True)
        print(f"wrote {path} ({image.width}x{image.height} {image.mode})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
