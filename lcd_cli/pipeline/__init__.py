"""The pipeline (layer 5): plan -> materialize -> fit -> score -> write -> report for `lcd
distill`, and the `lcd verify` / `lcd inspect` commands over the same layers and kinds."""
