"""One module per service the saga calls; each a class holding an injected httpx client."""
