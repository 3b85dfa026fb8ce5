"""The request-side compression step (map messages -> compress (cache)): overrides, message
mapping (`messages`), units and cache keys (`plan`), the cache, the engines that run the
compressor (`pool`, in-process `service`, `remote` client, the GPU `worker`, `engine_metrics`),
splicing results into the raw body (`rewrite`), and the step itself (`step`) with the contract
the gateway calls (`transform`).

May import: `proxy.core`, `proxy.store`, `proxy.compress`, `proxy.policy`, `proxy.accounting`.
Knows nothing of the gateway: the gateway calls it through `transform.ChatTransform`.
"""
