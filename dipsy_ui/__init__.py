"""DIPSY Studio: training-free synthetic training images for few-shot classification
(dual IP-Adapter guidance, arXiv 2509.22635).

The package is layered: settings (:mod:`.config`, :mod:`.presets`), loading (:mod:`.models`),
data and files, the diffusion engine (:mod:`.diffusion`), similarity and the batch job
(:mod:`.similarity`, :mod:`.generate`), the classifier (:mod:`.classifier`), the digit world
(:mod:`.world`), the app's facade (:mod:`.studio`) and its Gradio tabs (:mod:`.ui`).
"""

__version__ = "0.1.0"
