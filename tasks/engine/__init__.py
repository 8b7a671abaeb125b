"""The step machinery shared by every concern (see README, "How podnet is built")."""
