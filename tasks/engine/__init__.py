"""The step machinery: how concerns are run on a node. It imports no concern."""
