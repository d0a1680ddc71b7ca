"""The inventory service: the product catalog, stock levels and per-order stock reservations."""
