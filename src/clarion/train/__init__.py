"""Training: :mod:`.loop` (the ``Trainer`` and ``train``), the step's parts (:mod:`.embedding`,
:mod:`.probes`, :mod:`.nonfinite`), :mod:`.schedule`, :mod:`.metrics`, :mod:`.checkpoint`,
:mod:`.distributed` and :mod:`.gradcache`."""
