"""The synthetic sound-scene benchmark (docs/synthetic.md): :mod:`.plan` (what a clip holds), :mod:`.sounds`
(rendering events), :mod:`.captions` (the caption grammar, data tables), :mod:`.generate` (clips, captions,
splits on disk)."""
