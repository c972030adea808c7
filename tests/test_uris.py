"""`redact`: credentials never reach study.json or the terminal, and URIs without any come back unchanged."""

from __future__ import annotations

import pytest
from avmae.platform.tracking.uris import redact


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("http://alice:s3cret@mlflow:5000", "http://***@mlflow:5000"),
        ("postgresql+psycopg2://mlflow:pw@db:5432/mlflow", "postgresql+psycopg2://***@db:5432/mlflow"),
        ("https://ghp_TOKEN@github.com/org/repo", "https://***@github.com/org/repo"),
        ("http://u:p@ss@host/x", "http://***@host/x"),  # an unencoded @ in the password
        ("http://u:p%40ss@host/x", "http://***@host/x"),
        ("http://u:pa[ss@host/x", "http://***@host/x"),  # urlsplit refuses it (an "IPv6" bracket)
        ("http://mlflow:5000/?password=hunter2&user=a", "http://mlflow:5000/?password=***&user=a"),
        ("s3://bucket/run?X-Amz-Signature=abc&X-Amz-Credential=AK%2F1&region=eu",
         "s3://bucket/run?X-Amz-Signature=***&X-Amz-Credential=***&region=eu"),
        ("mysql://root:x@db/m?api_key=k&sslmode=require", "mysql://***@db/m?api_key=***&sslmode=require"),
    ],
)
def test_credentials_are_masked(uri, expected):
    assert redact(uri) == expected


@pytest.mark.parametrize(
    "uri",
    [
        "http://mlflow:5000",
        "sqlite:////abs/path/mlflow.db",
        "sqlite:///mlflow.db",
        "file:///tmp/mlruns",
        "s3://bucket/avmae",
        "/local/storage/avmae_runs",
        "http://mlflow:5000/?run=3&empty=",
        "http://host/?token=",  # nothing to hide
        "databricks",
        "",
    ],
)
def test_uris_without_credentials_are_unchanged(uri):
    assert redact(uri) == uri


def test_the_secret_appears_nowhere_in_the_result():
    uri = "https://user:Very-Secret-42@mlflow.example.org/api?token=Very-Secret-42#frag"
    assert "Very-Secret-42" not in redact(uri) and "user" not in redact(uri)
    assert redact(uri).endswith("mlflow.example.org/api?token=***#frag")
