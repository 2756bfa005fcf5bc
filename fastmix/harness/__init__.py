"""The experiment harness: data and splits, the original and retrained models, the
registry of unlearning methods, SPEC 8's evaluation and the report."""
