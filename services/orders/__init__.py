"""The orders service: event-sourced orders, their read model, and the port that starts each order's saga."""
