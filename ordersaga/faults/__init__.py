"""Network faults of our own making, for `ordersaga chaos`: a TCP proxy whose links misbehave on demand."""
