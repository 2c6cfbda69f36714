"""Signed webhooks to vendor systems (Standard Webhooks, DESIGN decision 9).

How it fits together:

- `subscriptions`: url, event types (exact or `*`), optional vendor, `whsec_` secret. A
  rotation keeps the previous secret signing for 24 h (several `v1,` signatures per header).
- `fanout`: a `BatchHandler` of the shared `LogConsumer`. In the batch's transaction, with the
  offsets, it inserts one delivery per matching (subscription, event) (unique per pair) and
  stores each matched event's body once. A subscription receives events recorded after it was
  created, so a replayed or refilled log does not flood it with history. Vendor-bound
  subscriptions match issue events of that vendor; unbound ones also match governance events.
- `sender`: leases due deliveries with `FOR UPDATE SKIP LOCKED` (any number of processes), at
  most `webhooks_per_subscription_concurrency` per subscription per process, POSTs the
  structured CloudEvent with `webhook-id` = event id (stable across attempts), records every
  attempt. 2xx delivered; 410 disables the subscription; anything else (timeouts and other
  non-2xx included) is retried per `webhooks_retry_schedule` with ±20 % jitter and at least
  `Retry-After`; after the last attempt the delivery is dead. `POST …/retry` requeues a failed
  or dead delivery with a fresh schedule.
- Delivery statuses: `pending` (queued, never attempted since (re)queued), `failed` (last
  attempt failed, another is scheduled), `delivered`, `dead`.
- `ssrf`: targets must be http(s) and resolve to public addresses only, checked at
  subscription time and on every connection (the sender's resolver), unless
  `webhooks_allow_private_targets`. Redirects are not followed.
"""
