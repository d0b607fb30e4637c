"""YAML (and JSON) parsing for the configs lcd reads: family configs, model (training) configs
and ``--set`` values (layer 3, families; imports only errors).

A YAML alias expands to the whole node it names, so a few lines of anchors (the "billion
laughs" alias bomb) build an exponentially large document and hang the parser's consumer. No
config lcd reads needs an alias, so :class:`NoAliasLoader` refuses every one, and texts over a
size cap are refused before parsing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent

from lcd_cli.errors import LcdError

# A family config is a few hundred bytes; a training config (Hydra, fairseq args) a few tens of
# kilobytes. 4 MB leaves room for any real one and bounds the parser's work on a hostile file.
MAX_CONFIG_BYTES = 4 * 1024 * 1024


class NoAliasLoader(yaml.SafeLoader):
    """A SafeLoader that refuses YAML aliases (``*name``): no config needs one, and an alias
    bomb would otherwise expand exponentially."""

    def compose_node(self, parent: Any, index: Any) -> Any:  # type: ignore[override]
        if self.check_event(AliasEvent):
            event = self.peek_event()
            mark = event.start_mark
            raise yaml.composer.ComposerError(
                None, None, f"YAML alias '*{event.anchor}' refused (aliases are not allowed in "
                "lcd configs)", mark)
        return super().compose_node(parent, index)


def parse_yaml(text: str, origin: str | Path, what: str = "config") -> Any:
    """Parse YAML (JSON is YAML too) without aliases; LcdError naming ``origin`` on failure."""
    if len(text.encode("utf-8", "surrogatepass")) > MAX_CONFIG_BYTES:
        raise LcdError(f"the {what} is larger than {MAX_CONFIG_BYTES // (1024 * 1024)} MB",
                       file=origin, hint=f"is it really a {what}?")
    try:
        return yaml.load(text, Loader=NoAliasLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as e:
        hint = "write the aliased values out" if "alias" in str(e) else None
        raise LcdError(f"the {what} is not valid YAML ({e})", file=origin, hint=hint) from e


def read_text(path: str | Path, what: str = "config") -> str:
    """A config file's text, refusing files over the size cap before reading them."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size > MAX_CONFIG_BYTES:
            raise LcdError(f"the {what} is {size} bytes, over the {MAX_CONFIG_BYTES // (1024 * 1024)}"
                           " MB limit", file=path, hint=f"is it really a {what}?")
        return path.read_text()
    except OSError as e:
        raise LcdError(f"cannot read the {what} ({e.strerror})", file=path) from e
    except UnicodeDecodeError as e:
        raise LcdError(f"the {what} is not UTF-8 text ({e.reason})", file=path) from e
