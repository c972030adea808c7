"""Everything a study writes to MLflow: the run layout (`layout`, the writer/reader contract), the
durable queue, the Tune callbacks, exported encoders, provenance and system metrics."""
