"""Getting a Runner's package into storage: once per version of the code.

:class:`Publisher` scans the tree, asks the package index whether an unchanged
tree's package is already stored (then nothing is built or uploaded), builds and
uploads otherwise, puts the package back if another Runner pruned it while this
one registered, and at exit prunes the name's superseded packages.  It also
says what the package holds and which dependencies it declares
(:class:`PackagePreview`), at INFO and for ``Runner(..., dry_run=True)``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from flamepy._async_client import AsyncConnection
from flamepy._errors import InternalError, InvalidArgumentError
from flamepy.runner._deps import Dependencies, DependencyError, find_dependencies
from flamepy.runner._package import Package, Tree, build_tree, indexed_package, scan_tree
from flamepy.runner._storage import PackageStorage

log = logging.getLogger("flamepy.runner")

PREVIEW_FILES_SHOWN = 20


@dataclass(frozen=True)
class PackagePreview:
    """What a Runner packages: the archive's name and size, its files, and the
    dependencies it declares (``dependencies.source``: ``uv.lock``,
    ``pyproject.toml``, ``requirements.txt``, ``Runner dependencies``, ``setup.py``
    or ``none``)."""

    file_name: str
    size: int
    files: tuple[str, ...]
    dependencies: Dependencies

    def __str__(self) -> str:
        shown = "\n".join(f"  {name}" for name in self.files[:PREVIEW_FILES_SHOWN])
        more = len(self.files) - PREVIEW_FILES_SHOWN
        if more > 0:
            shown += f"\n  ... and {more} more"
        return (
            f"package {self.file_name}: {len(self.files)} file(s), {self.size:,} bytes\n"
            f"{shown}\ndependencies: {self.dependencies.describe()}"
        )


class Publisher:
    """One Runner's package: scan, build or reuse, upload or skip, prune."""

    def __init__(
        self,
        root: Path,
        name: str,
        workdir: Path,
        *,
        excludes: Sequence[str],
        dependencies: Sequence[str],
        size_budget: int,
    ) -> None:
        self.root = root
        self.name = name
        self.workdir = workdir
        self.excludes = list(excludes)
        self.dependencies = list(dependencies)
        self.size_budget = size_budget
        self.package: Package | None = None
        self.uploaded = False
        self._tree: Tree | None = None

    async def _scan(self) -> Tree:
        if self._tree is None:
            self._tree = await asyncio.to_thread(
                scan_tree,
                self.root,
                self.name,
                self.workdir,
                excludes=self.excludes,
                dependencies=self.dependencies,
                size_budget=self.size_budget,
            )
        return self._tree

    async def preview(self) -> PackagePreview:
        """Build the package (or know it from the index) and say what it holds."""
        tree = await self._scan()
        package = self.package
        if package is None:
            package = await asyncio.to_thread(indexed_package, tree)
        if package is None:
            package = self.package = await asyncio.to_thread(build_tree, tree, self.workdir)
        return self._report(package)

    def _report(self, package: Package) -> PackagePreview:
        try:
            deps = find_dependencies(self.root, self.dependencies)
        except DependencyError as exc:
            raise InvalidArgumentError(
                f"the project's dependencies cannot be read: {exc}; fix the file, or "
                "exclude it from the package"
            ) from exc
        preview = PackagePreview(package.file_name, package.size, package.files, deps)
        log.info(
            "Runner %s: package %s, %d file(s), %d bytes; dependencies: %s",
            self.name,
            package.file_name,
            len(package.files),
            package.size,
            deps.describe(),
        )
        return preview

    async def publish(self, storage: PackageStorage) -> Package:
        """Make sure ``storage`` holds the package; upload only when it does not."""
        tree = await self._scan()
        indexed = await asyncio.to_thread(indexed_package, tree)
        if indexed is not None and await asyncio.to_thread(storage.exists, indexed):
            # An unchanged tree whose package is stored: not even built.
            log.info("package %s is already in storage; not uploading it again", indexed.file_name)
            package = indexed
        else:
            package = await asyncio.to_thread(build_tree, tree, self.workdir)
            absent = indexed is not None and indexed.digest == package.digest
            if not absent and await asyncio.to_thread(storage.exists, package):
                log.info(
                    "package %s is already in storage; not uploading it again", package.file_name
                )
            else:
                await asyncio.to_thread(storage.upload, package)
                self.uploaded = True
        self.package = package
        self._report(package)
        return package

    async def keep(self, storage: PackageStorage) -> None:
        """After registration: if another Runner of the name pruned the package in the
        meantime (it was not in use yet), put the same bytes back."""
        package = self.package
        if package is None or self.uploaded:
            return
        if await asyncio.to_thread(storage.exists, package):
            return
        if package.path is None:
            rebuilt = await asyncio.to_thread(build_tree, await self._scan(), self.workdir)
            if rebuilt.digest != package.digest:
                raise InternalError(
                    f"the package {package.file_name} was removed from storage while this "
                    "Runner started, and the project has changed since; start again"
                )
            package = self.package = rebuilt
        await asyncio.to_thread(storage.upload, package)
        self.uploaded = True

    async def prune(self, storage: PackageStorage, conn: AsyncConnection) -> None:
        """Keep this package for the next run; remove the name's older ones that no
        registered application uses.  Storage that cannot list (HTTP) gets this
        Runner's own upload removed instead, as nothing else would remove it."""
        if self.package is None or not self.uploaded:
            return
        url = storage.url_for(self.package)
        listed = await asyncio.to_thread(storage.packages, self.name)
        if listed is None:
            await asyncio.to_thread(storage.delete, url)
            return
        in_use = {app.url for app in await conn.list_applications()}
        for other in listed:
            if other != url and other not in in_use:
                log.info("removing superseded package %s", other)
                await asyncio.to_thread(storage.delete, other)


__all__ = ["PackagePreview", "Publisher"]
