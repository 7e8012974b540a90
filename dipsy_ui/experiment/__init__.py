"""Experiments: does synthetic data help, and which guidance helps most, on the user's own data?

Arms (ways of making the training set: real only, text only, positive only, DIPSY with each
negative mode, ...) are compared at several shots per class over several seeds, each cell a
normal generation run plus a normal training run (``python -m dipsy_ui experiment SPEC --out DIR``).

:mod:`.spec` the spec file and its validation; :mod:`.subsets` reproducible few-shot subsets and
the test set; :mod:`.runner` the resumable run with progress events and cancel; :mod:`.stats`
t intervals over seeds, paired differences and the verdict; :mod:`.report` the table and plots.
"""
