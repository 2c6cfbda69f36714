"""Signed webhooks to vendor systems: subscriptions, fan-out from the log, delivery with retries."""
