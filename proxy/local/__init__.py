"""The embedded offline upstream (`serve` with no upstream configured): the packaged small LM
as an OpenAI-compatible server (`upstream`), its model (`model`) and HTTP framing (`wire`).

May import: `proxy.core`, `proxy.compress` (the model loader).
"""
