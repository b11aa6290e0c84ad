"""What keeps bad rows and batches out: heuristic filters, deduplication, the gate's expectation suites."""
