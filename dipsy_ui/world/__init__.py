"""The digit world: small models trained on handwritten digits in the real models' formats
(:mod:`.build`, ``python -m dipsy_ui train-world``, with :mod:`.config`, :mod:`.training` and
:mod:`.adapters`) and the report that reads their images back (:mod:`.report`,
``python -m dipsy_ui.bench world``)."""
