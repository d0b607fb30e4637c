"""Clients of real inference engines (layer 5): load a distilled model with the engine's own
code and compare it with the original. Each engine is an optional dependency, imported only
inside its module's functions (a missing engine is an LcdError naming the install command)."""
