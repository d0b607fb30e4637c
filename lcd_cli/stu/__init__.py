"""STU / Flash-STU spectral filters, their shared-pole distillation and the recurrent layer.

Modules: ``filters`` (the Hankel matrix and the spectral filters phi), ``layer`` (the exact and
approx convolutions from the checkpoint), ``runtime`` (the distilled recurrent layer),
``distill`` (`lcd distill` / `lcd verify` for STU checkpoints).
"""
