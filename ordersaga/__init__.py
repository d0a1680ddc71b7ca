"""The operator CLI of ordersaga: up, serve, migrate, worker, seed, replay, load."""
