"""The engine every stage shares: Step, the batch runner, the run, the store and its run-dir layout, checkpoints, lease, manifest."""
