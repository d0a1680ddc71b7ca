"""The worker process: runs OrderWorkflow and its activities on task queue `orders`."""
