"""The last stage (**account**): per-request usage records and the ledger that sums them
(`ledger`), the upstream's own token counts read from bodies and SSE (`usage`), Prometheus
series (`metrics`), the accountant that feeds both (`accountant`) and the price table and
report (`report`).

May import: `proxy.core`, `proxy.store`, `proxy.policy`.
"""
