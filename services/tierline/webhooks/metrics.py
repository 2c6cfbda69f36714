"""Prometheus metrics of the webhooks role."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DELIVERIES_CREATED = Counter(
    "tierline_webhook_deliveries_created_total", "Deliveries queued for matching events"
)
ATTEMPTS = Counter(
    "tierline_webhook_attempts_total",
    "Delivery attempts by outcome (delivered, retry, dead, disabled)",
    ["outcome"],
)
ATTEMPT_LATENCY = Histogram(
    "tierline_webhook_attempt_seconds",
    "Duration of one delivery attempt, request sent to response or error",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 30),
)
DEAD_LETTERS = Counter(
    "tierline_webhook_dead_letters_total", "Deliveries given up on (schedule spent or 410 Gone)"
)
DELIVERY_AGE = Histogram(
    "tierline_webhook_event_to_delivery_seconds",
    "From the event's commit to its successful delivery",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 3600, 86400),
)
QUEUE_DEPTH = Gauge(
    "tierline_webhook_queue_depth", "Undelivered deliveries of active subscriptions"
)
OLDEST_PENDING = Gauge(
    "tierline_webhook_oldest_pending_seconds", "Age of the oldest undelivered delivery"
)
IN_FLIGHT = Gauge("tierline_webhook_in_flight", "Attempts in progress in this process")
LEASES_LOST = Counter(
    "tierline_webhook_leases_lost_total",
    "Attempt results dropped because the delivery's lease had expired",
)
