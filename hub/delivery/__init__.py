"""Delivery: the outbox written with processing, and the engine that empties it (issue 5).

- `outbox` — turns processed events into outbox rows in the processing transaction.
- `engine` — claims due rows, sends them through a destination's transport, records the answers.
- `embedded` — runs the engine inside `hub serve` (no Redis); `hub.jobs` runs it as dramatiq actors.
- `replay` — resend stored outbound rows, re-run stored inbound messages through the current routes.
"""
