"""People in the loop: review requests and decisions, quarantine, Argilla labels, the judge measured."""
