"""Distribution `cityanchor`: tamper-evident smart-city sensor data anchored on a blockchain."""

from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py


class BuildPyWithMigrations(build_py):
    """Also copy the top-level ``sql/NNN_*.sql`` migrations into ``anchor/store/migrations/``.

    The repository keeps them in ``sql/`` (the project's layout); a wheel needs them inside the
    package, where ``anchor.store.schema`` reads them with importlib.resources.
    """

    def run(self) -> None:
        super().run()
        sources = sorted(Path(__file__).resolve().parent.joinpath("sql").glob("[0-9]*_*.sql"))
        if not sources:
            raise SystemExit("setup.py: no sql/NNN_*.sql migrations to ship")
        target = Path(self.build_lib, "anchor", "store", "migrations")
        self.mkpath(str(target))
        for source in sources:
            self.copy_file(str(source), str(target / source.name))


setup(
    name="cityanchor",
    version="0.1.0",
    description="Signed smart-city sensor readings, batched into RFC 9162 Merkle trees and anchored on chain",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["anchor", "anchor.*", "devices", "devices.*"]),
    package_data={
        "anchor": [
            "py.typed",
            "schemas/*.json",
            "contracts/*.json",
            "contracts/*.sol",
            "api/explorer/static/*",
        ],
        "devices": ["py.typed"],
    },
    install_requires=[
        "cryptography>=42,<51",
        "cbor2>=5.6,<7",
        "asyncpg>=0.29,<1",
        "paho-mqtt>=2.1,<3",
        # The ingestor's MQTT packet codec (anchor.ingest.mqtt_native); sans-I/O, in Rust.
        "mqtt5==0.8.0",
        "web3>=7,<9",
        "aiohttp>=3.9,<4",
        "prometheus_client>=0.20,<1",
    ],
    extras_require={
        "test": [
            "pytest>=8,<10",
            "hypothesis>=6.100,<7",
            "jsonschema>=4.20,<5",
            # Independent implementations used only as test oracles.
            "pycose>=1.1,<2",
            "joserfc>=1.0,<2",
            "PyJWT>=2.8,<3",
            "gmssl>=3.2,<4",
            "schemathesis>=4.32,<5",
            "PyYAML>=6.0,<7",
            "types-PyYAML>=6.0,<7",
            "ruff>=0.5,<1",
            "mypy>=1.10,<3",
            # tests/unit/test_store_migrations.py builds a wheel offline (no build isolation).
            "wheel>=0.40",
            # bench/soak.py's plot (make install puts it in the venv with the test tools).
            "matplotlib>=3.8,<4",
        ],
    },
    entry_points={"console_scripts": ["cityanchor=anchor.cli:main"]},
    cmdclass={"build_py": BuildPyWithMigrations},
)
