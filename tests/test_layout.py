"""The package layout the user asked for, and the stdlib-shadowing trap it must avoid."""

import platform as stdlib_platform
import subprocess
import sys

from conftest import REPO


def test_platform_folder_is_not_a_regular_package():
    # A platform/__init__.py would shadow the standard library's `platform` for any process started in
    # the repo root (pytest, Ray workers) and break torch and ray.
    assert not (REPO / "platform" / "__init__.py").exists()


def test_stdlib_platform_wins_in_repo_root():
    out = subprocess.run(
        [sys.executable, "-c", "import platform; print(platform.__file__); print(platform.machine())"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    assert "site-packages" not in out.stdout.splitlines()[0]
    assert out.stdout.splitlines()[0].endswith("platform.py")
    assert stdlib_platform.machine()


def test_one_import_namespace_maps_onto_the_folders():
    import avmae.dashboards
    import avmae.models
    import avmae.platform.tracking.layout

    assert avmae.models.__file__.startswith(str(REPO / "models"))
    assert avmae.platform.tracking.layout.__file__.startswith(str(REPO / "platform"))
    assert avmae.dashboards.__path__[0].startswith(str(REPO / "dashboards"))


def test_cli_help_lists_the_subcommands():
    out = subprocess.run(
        [sys.executable, "-m", "avmae.platform.cli", "--help"],
        cwd=REPO, capture_output=True, text=True, check=True,
    )
    for name in ("sweep", "data", "dashboard"):
        assert name in out.stdout


def test_lazy_packages_export_what_they_list():
    """`avmae.models` and `avmae.platform.data` resolve their names on first use (so reading a study imports
    no torch): every listed name must resolve, and nothing may be listed twice or forgotten."""
    import avmae.models
    import avmae.platform.data

    for package in (avmae.models, avmae.platform.data):
        assert sorted(package.__all__) == sorted(package._SUBMODULE), package.__name__
        for name in package.__all__:
            assert getattr(package, name) is not None, f"{package.__name__}.{name}"
