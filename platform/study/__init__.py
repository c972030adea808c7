"""A study from its YAML file to its Tune experiment: spec, cells, plan, data preparation, the runner."""
