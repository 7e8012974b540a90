"""The Gradio app: one module per tab (widgets and event wiring only) composed by :mod:`.app`.

No module here imports torch; every action calls a service of :class:`dipsy_ui.studio.Studio`.
"""
