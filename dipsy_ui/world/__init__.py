"""The worlds: small models trained here in the real models' formats, on the digits or on the
drawn critters (:mod:`.worlds`), made by :mod:`.build` (``python -m dipsy_ui train-world``, with
:mod:`.config`, :mod:`.training` and :mod:`.adapters`), and the report that reads their images
back (:mod:`.report` and :mod:`.families`, ``python -m dipsy_ui.bench world``)."""
