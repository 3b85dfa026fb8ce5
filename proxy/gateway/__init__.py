"""The HTTP edge (request -> tenant ... forward -> stream back): body intake and limits
(`intake`), key -> tenant (`tenancy`), the chat path (`pipeline`), the upstream client and its
transports (`upstream`, `transport`, `wire`, `forwarding`), the SSE relay (`streaming`) and the
typed state handlers share (`state`).

May import: `proxy.core`, `proxy.store`, `proxy.policy`, `proxy.accounting`, `proxy.compression`,
`proxy.alignment` (capture). Never the wiring (`proxy.services`, `proxy.app`) or the dashboard.
"""
