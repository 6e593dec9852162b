"""Reading CLAP checkpoints that other toolkits wrote (``clarion convert``).

:mod:`.laion` maps LAION-CLAP's ``.pt`` files onto ``transformers.ClapModel`` (written as a Hugging
Face folder that ``hf-clap:DIR`` loads). :mod:`.checkpoint` holds what the converters share: reading a
PyTorch checkpoint safely and the strict key check with its error message.
"""
