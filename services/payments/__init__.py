"""Payments service: tokenised cards, idempotent charges and refunds, and the card-network simulator."""
