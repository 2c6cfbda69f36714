"""Inbound webhooks: Jira, Zendesk, GitHub and generic senders drive issues with no glue code.

`verify` checks each tool's own signature over the raw body; `mapping` turns a verified payload
into ticket changes and those into issue commands (pure, no I/O); `sources` and `deliveries`
store the sources (secrets sealed) and what arrived; `receive` runs one delivery in one unit of
work; `api` serves the routes. See docs/adr/0012-inbound-webhooks.md.
"""
