"""The diffusion engine: :class:`~.pipeline.DipsyPipeline` (the DIPSY sampling loop, one U-Net
call per step), its routed IP-Adapter attention (:mod:`.ip_attention`), latent previews
(:mod:`.preview`), the authors' adapter-input augmentation (:mod:`.augment`), and the authors'
three-call formulation kept as an independent oracle for the parity tests (:mod:`.reference`)."""

from .pipeline import SCHEDULERS, DipsyPipeline, DipsyPipelineOutput, dipsy_guidance

__all__ = ["SCHEDULERS", "DipsyPipeline", "DipsyPipelineOutput", "dipsy_guidance"]
