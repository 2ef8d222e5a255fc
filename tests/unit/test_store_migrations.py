"""The migrations ship inside the wheel and the installed store finds them there.

The repository keeps them in the top-level sql/; setup.py's build_py copies them into
anchor/store/migrations/ of the build, and anchor.store.schema reads that package resource
when it exists. Here a wheel is built from a copy of the sources (offline: no build isolation)
and unpacked, which is the layout pip installs.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from anchor.store import SQL_DIR, StoreError, migration_files

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ("setup.py", "pyproject.toml", "README.md", "MANIFEST.in", "anchor", "devices", "sql")
MIGRATIONS = sorted(p.name for p in (ROOT / "sql").glob("[0-9]*_*.sql"))

pytestmark = pytest.mark.slow


def _run(*cmd: str, cwd: Path, env_path: Path | None = None) -> str:
    env = None
    if env_path is not None:
        env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(env_path), "PYTHONNOUSERSITE": "1"}
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


@pytest.fixture(scope="module")
def source_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The files a distribution is built from, copied (the build writes build/, *.egg-info)."""
    src = tmp_path_factory.mktemp("src")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    return src


def test_checkout_reads_the_top_level_sql_directory() -> None:
    assert ROOT / "sql" == SQL_DIR
    assert [f"{m.version:03d}_{m.name}.sql" for m in migration_files()] == MIGRATIONS


def test_missing_migrations_are_reported(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as exc:
        migration_files(tmp_path)
    assert exc.value.reason == "migrations_missing"
    with pytest.raises(StoreError) as exc:
        migration_files(tmp_path / "absent")
    assert exc.value.reason == "migrations_missing"


def test_wheel_carries_the_migrations_and_the_installed_store_finds_them(
    source_copy: Path, tmp_path: Path
) -> None:
    out = tmp_path / "wheels"
    _run(
        sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
        "-w", str(out), ".",
        cwd=source_copy,
    )  # fmt: skip
    (wheel,) = out.glob("cityanchor-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        shipped = {
            Path(n).name: zf.read(n)
            for n in zf.namelist()
            if n.startswith("anchor/store/migrations/") and n.endswith(".sql")
        }
        assert not [n for n in zf.namelist() if n.startswith("sql/")]
        site = tmp_path / "site-packages"
        zf.extractall(site)
    assert sorted(shipped) == MIGRATIONS
    for name, data in shipped.items():
        assert data == (ROOT / "sql" / name).read_bytes()
    # The unpacked wheel first on the path (its dependencies come from this interpreter's
    # site-packages): the store must find the migrations inside the installed package.
    probe = (
        "import json, anchor.store as s; "
        "print(json.dumps([str(s.SQL_DIR), s.__file__, "
        "[f'{m.version:03d}_{m.name}.sql' for m in s.migration_files()]]))"
    )
    found_dir, module, names = json.loads(
        _run(sys.executable, "-c", probe, cwd=tmp_path, env_path=site)
    )
    assert Path(module).is_relative_to(site)
    assert Path(found_dir) == site / "anchor" / "store" / "migrations"
    assert names == MIGRATIONS


def test_sdist_carries_the_migrations(source_copy: Path, tmp_path: Path) -> None:
    # `python -m build` makes the wheel from the sdist: sql/ must be in it (MANIFEST.in).
    _run(sys.executable, "setup.py", "-q", "sdist", "-d", str(tmp_path), cwd=source_copy)
    (sdist,) = tmp_path.glob("cityanchor-*.tar.gz")
    with tarfile.open(sdist) as tf:
        names = sorted(Path(n).name for n in tf.getnames() if "/sql/" in n and n.endswith(".sql"))
    assert names == MIGRATIONS
