"""The SLA engine: clock rows kept from the log, and scanners that record warnings and breaches."""
