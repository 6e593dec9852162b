"""clarion: contrastive language-audio pretraining with InfoNCE, SigLIP, SVR, m-LTM and triplet objectives."""

__version__ = "0.1.0"
