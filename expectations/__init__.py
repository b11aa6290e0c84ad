"""The Great Expectations suites the gate runs, one JSON file per stage output: edit one and the next run's gate changes."""
