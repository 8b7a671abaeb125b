"""
The checksum lock without a deploy: ``python3 -m tasks.lock_checksums inventory/<cluster>.py``.

Resolves the sha256 of every release file the inventory's settings need and nobody pinned
(``tasks.artifacts.checksums``), for the architectures given, and writes them to the lock file, so
the lock can be reviewed in a pull request before any host sees it. No host is contacted.
"""

from __future__ import annotations

import pyinfra_cli  # noqa: F401  (first: it monkey-patches the standard library with gevent)

import argparse
import sys
from pathlib import Path

from tasks.artifacts import catalog
from tasks.engine.runner import applicable, artifacts_needed
from tasks.engine.context import HostContext
from tasks.deploys import POD_NETWORK
from tasks.artifacts.catalog import ArtifactError
from tasks.artifacts.checksums import Checksums, ChecksumLockFile
from tasks.artifacts.download import CacheError, Downloader
from tasks.engine.pyinfra_compat import load_inventory
from tasks.releases import ARCHITECTURES
from tasks.settings import SettingsError, parse_inventory


def lock_inventory(hosts, architectures: list[str], verify: bool = False,
                   downloader: Downloader | None = None) -> list[Checksums]:
    """Resolve (and lock) every sum the inventory's settings need, for ``architectures``.

    With ``verify``, every locked sum is also checked against what upstream publishes now.
    Raises SettingsError for bad inventory data and ChecksumError as a deploy would.
    """
    parsed = parse_inventory(hosts)
    first_control_plane = next((name for name, s in parsed.items() if s.is_control_plane), None)
    runs: dict[Path, Checksums] = {}
    for host_name, settings in parsed.items():
        ctx = HostContext(host_name=host_name, settings=settings, first_control_plane=first_control_plane)
        run = runs.get(settings.artifact_lock_file)
        if run is None:
            run = runs[settings.artifact_lock_file] = Checksums(
                ChecksumLockFile(settings.artifact_lock_file),
                downloader or Downloader(settings.download_cache_dir, progress=False,
                                         allow_insecure_http=settings.allow_insecure_http))
        for name in artifacts_needed(applicable(POD_NETWORK, ctx), ctx):
            for arch in architectures:
                if verify:
                    run.verify(settings, name, catalog.version_of(settings, name), arch)
                catalog.resolve(settings, name, arch, run.lookup(settings))
    return list(runs.values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m tasks.lock_checksums",
        description="Resolve the sha256 of every release file an inventory needs that nobody pinned, and "
                    "write them to the lock file (artifact_lock_file) without touching any host.")
    parser.add_argument("inventory", help="a pyinfra inventory file, e.g. inventory/example.py")
    parser.add_argument("--arch", action="append", choices=sorted(set(ARCHITECTURES.values())),
                        help="architecture of the nodes (repeat for several; default amd64)")
    parser.add_argument("--verify", action="store_true",
                        help="also ask upstream again for every locked sum and fail where it now differs")
    options = parser.parse_args(argv)
    if not Path(options.inventory).is_file():
        print(f"podnet: {options.inventory}: no such inventory file", file=sys.stderr)
        return 1
    hosts = list(load_inventory(options.inventory))
    if not hosts:
        print(f"podnet: {options.inventory}: no hosts (is it an inventory file?); nothing to lock", file=sys.stderr)
        return 1
    try:
        runs = lock_inventory(hosts, options.arch or ["amd64"], options.verify)
    except (SettingsError, ArtifactError, CacheError) as error:
        print(f"podnet: {error}", file=sys.stderr)
        return 1
    for run in runs:
        if run.summary():
            print(run.summary())
        elif run.lock.entries:
            print(f"podnet: {run.lock.path} already holds every sum this inventory needs that is not pinned"
                  + (" (and upstream still publishes them)" if options.verify else ""))
        else:
            print(f"podnet: every sum this inventory needs is pinned; {run.lock.path} is not needed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
