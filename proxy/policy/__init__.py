"""Stage 3 of the request path (tenant -> **policy**): the policy model (`model`), the TOML
schema and validation (`schema`), and file:line mapping for error messages (`toml_lines`).

May import: `proxy.core`, `proxy.compress` (protection rules are the compressor's own type).
"""
