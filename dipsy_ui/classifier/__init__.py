"""The few-shot classifier: CLIP with LoRA, trained on real + synthetic images (the DataDream /
DISEF recipe the DIPSY paper, arXiv 2509.22635, reports with).

:mod:`.model` the classifier and loading a trained one; :mod:`.data` labelled lists (folders or
(image, class name) pairs) and the training streams; :mod:`.train` the run and the real-only vs
real+synthetic comparison; :mod:`.evaluate` top-1, per-class accuracy and predictions;
:mod:`.report` curves, confusion matrix and the comparison table.
"""
