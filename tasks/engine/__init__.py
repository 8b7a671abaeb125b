"""The step machinery: what every concern's steps run on (probe, answers, run lock...)."""
