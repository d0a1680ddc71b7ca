"""The notifications service: accepts notices idempotently and delivers them by email or SMS with retries."""
