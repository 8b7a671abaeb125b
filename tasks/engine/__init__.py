"""The step machinery: steps over a per-host context, the one probe per host, the runner, operations,
what a concern owns on a node (ownership). It imports no concern (tests/test_steps.py holds it to that)."""
