"""The augmentation recipe beyond crops: its settings, colour jitter, torchvision-exact eval.

- :mod:`loader.augment.settings`          -- :class:`Augment`, the validated knobs of ImageLoader.
- :mod:`loader.augment.jitter`            -- torchvision's ``ColorJitter``: parameters drawn in
                                             numpy, applied with vectorised torch.
- :mod:`loader.augment.torchvision_eval`  -- ``Resize(floor(s / crop_fraction)) + CenterCrop(s)``
                                             pixel for pixel, from a decoded window.
- :mod:`loader.augment.batch`             -- the seeded generator of ``batch_transform``.
"""
