"""The API gateway: the public `/api/v1` surface in front of the five services."""
