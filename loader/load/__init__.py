"""``ImageLoader``'s stages: ``sampler`` (the epoch's order and crop windows, numpy), ``feed`` (DALI's
external source), ``pipeline`` (the DALI graph), ``finisher`` (the CPU graph's torch resize and
normalize), ``batches`` (DALI's outputs -> torch), ``imageloader`` (epochs, DDP, resume)."""
