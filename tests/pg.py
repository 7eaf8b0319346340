"""A throwaway PostgreSQL cluster from the machine's server binaries (Debian's postgresql).

``initdb --no-sync`` + ``pg_ctl start`` on a free loopback port with a private socket directory;
when running as root, the cluster runs as the ``postgres`` system user (PostgreSQL refuses root).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg

from keyturn.lab import free_port


def bindir() -> Path:
    """The server binaries' directory (``pg_config --bindir``, else the newest Debian one)."""
    try:
        out = subprocess.run(["pg_config", "--bindir"], capture_output=True, text=True, check=True)
        candidate = Path(out.stdout.strip())
        if (candidate / "initdb").exists():
            return candidate
    except (OSError, subprocess.CalledProcessError):
        pass
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise FileNotFoundError("PostgreSQL server binaries not found: apt-get install postgresql")
    return Path(found[-1]).parent


@dataclass
class PgCluster:
    """A running throwaway cluster."""

    root: Path
    port: int

    def _as_owner(self) -> list[str]:
        return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []

    @classmethod
    def start(cls) -> PgCluster:
        """initdb + pg_ctl start; returns when it accepts connections."""
        root = Path(tempfile.mkdtemp(prefix="keyturn-pg-"))
        cluster = cls(root=root, port=free_port())
        if os.geteuid() == 0:
            shutil.chown(root, "postgres", "postgres")
        bins = bindir()
        subprocess.run(
            [
                *cluster._as_owner(),
                str(bins / "initdb"),
                "-D",
                str(root / "data"),
                "--no-sync",
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
            ],
            check=True,
            capture_output=True,
        )
        opts = (
            f"-p {cluster.port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        subprocess.run(
            [
                *cluster._as_owner(),
                str(bins / "pg_ctl"),
                "-D",
                str(root / "data"),
                "-o",
                opts,
                "-l",
                str(root / "log"),
                "-w",
                "-t",
                "30",
                "start",
            ],
            check=True,
            capture_output=True,
        )
        return cluster

    def stop(self) -> None:
        """pg_ctl stop (fast) and remove the directory."""
        subprocess.run(
            [
                *self._as_owner(),
                str(bindir() / "pg_ctl"),
                "-D",
                str(self.root / "data"),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
            check=False,
            capture_output=True,
        )
        shutil.rmtree(self.root, ignore_errors=True)

    def new_database(self) -> str:
        """Create an empty database; return its SQLAlchemy URL."""
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(
            f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True
        ) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')  # name is generated above, not input
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"
