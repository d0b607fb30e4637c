"""Output layouts, by name (``lcd distill --layout``; recorded as metadata ``lcd_layout``)."""

from lcd_cli.errors import LcdError
from lcd_cli.layouts.base import LayerResult, Layout, SharedResult
from lcd_cli.layouts.lcd import LcdLayout
from lcd_cli.layouts.stripedhyena import StripedHyenaLayout
from lcd_cli.layouts.vortex import VortexLayout

LAYOUTS: dict[str, Layout] = {layout.name: layout
                              for layout in (LcdLayout(), StripedHyenaLayout(), VortexLayout())}


def get_layout(name: str) -> Layout:
    if name not in LAYOUTS:
        raise LcdError(f"unknown layout '{name}'", key="layout",
                       hint=f"choose one of {', '.join(LAYOUTS)}")
    return LAYOUTS[name]


__all__ = ["LAYOUTS", "LayerResult", "Layout", "SharedResult", "get_layout"]
