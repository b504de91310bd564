"""Checks the wheels that carry hepms's dependencies to the GPU machine (no network needed).

    python scripts/device/deps.py wheels .whl      # here, after scripts/device_wheels.sh:
                                                   # is the wheel set complete for the machine?
    python3 scripts/device/deps.py installed .whl  # there, after installing .whl/*.whl:
                                                   # are the requirements met by what is installed?

``wheels`` checks, for the machine's interpreter (CPython 3.12 on Linux x86-64): one wheel per
pinned requirement of wheels.txt / fallback.txt (and nothing else), each installable there (its
tags), every requirement of each wheel (environment markers evaluated for that interpreter) and
every runtime and build dependency of pyproject.toml met by a pinned wheel or named in
image_packages.txt (the image's versions are not known here: ``installed`` checks them there).
Exit status 1 on any problem.

``installed`` reads the installed versions (importlib.metadata, so with PYTHONPATH=/tmp/site the
carried wheels come first) and reports every requirement of the carried wheels and of
pyproject.toml (runtime and build) that is not met. It prints to stdout the fallback wheels
(.whl/fallback/) that would meet an unmet one, for the caller to install; exit status 0 when
everything is met, 3 when only fallbacks are missing, 1 when something is unmet and no fallback
covers it.

Standard library plus ``packaging`` (present on both machines).
"""
from __future__ import annotations

import argparse
import email.parser
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from typing import Optional

from packaging import tags
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent

# The GPU machine's interpreter (KINDS notes of the lent machine: Python 3.12.3, x86-64 Linux),
# for evaluating environment markers ("python_version < '3.12'") when checking here.
TARGET_ENV = {
    "python_version": "3.12", "python_full_version": "3.12.3", "implementation_name": "cpython",
    "implementation_version": "3.12.3", "platform_python_implementation": "CPython",
    "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
    "os_name": "posix", "extra": "",
}
# Tags pip accepts there: the download step asks for manylinux wheels up to glibc 2.39 (the
# machine's python3 3.12.3 is Ubuntu 24.04's, glibc 2.39).
_PLATFORMS = ([f"manylinux_2_{n}_x86_64" for n in range(39, 4, -1)]
              + ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"])
TARGET_TAGS = frozenset(
    list(tags.cpython_tags(python_version=(3, 12), abis=["cp312", "abi3", "none"], platforms=_PLATFORMS))
    + list(tags.compatible_tags(python_version=(3, 12), interpreter="cp312", platforms=_PLATFORMS)))


def read_pins(path: Path) -> list[Requirement]:
    """``name==version`` lines of a pin file (comments and blank lines skipped)."""
    pins = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        req = Requirement(line)
        specs = list(req.specifier)
        if len(specs) != 1 or specs[0].operator != "==" or req.marker or req.extras:
            raise ValueError(f"{path}:{number}: expected a plain pin 'name==version', got {line!r}")
        pins.append(req)
    return pins


def pinned_version(req: Requirement) -> Version:
    return Version(next(iter(req.specifier)).version)


def read_names(path: Path) -> set[str]:
    """Canonical package names, one per line (comments skipped)."""
    names = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return {canonicalize_name(name) for name in names if name}


def runtime_requirements(pyproject: Path = REPO / "pyproject.toml", build: bool = False) -> list[Requirement]:
    """pyproject.toml's [project] dependencies (build: also [build-system] requires)."""
    import tomllib  # Python >= 3.11 (both machines); imported here so the rest works on 3.10

    with open(pyproject, "rb") as handle:
        doc = tomllib.load(handle)
    texts = doc["project"]["dependencies"] + (doc["build-system"]["requires"] if build else [])
    return [Requirement(text) for text in texts]


def wheel_requirements(wheel: Path) -> list[Requirement]:
    """Requires-Dist of a wheel (from its METADATA)."""
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.count("/") == 1 and n.endswith(".dist-info/METADATA")]
        if len(names) != 1:
            raise ValueError(f"{wheel}: expected one .dist-info/METADATA, found {names}")
        message = email.parser.Parser().parsestr(archive.read(names[0]).decode())
    return [Requirement(text) for text in message.get_all("Requires-Dist") or []]


def applies(req: Requirement, env: Optional[dict]) -> bool:
    """Whether a requirement applies (no extra asked for) in ``env`` (None: this interpreter)."""
    return req.marker is None or Marker(str(req.marker)).evaluate(env)


def _wheels(folder: Path) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for wheel in sorted(folder.glob("*.whl")):
        name = canonicalize_name(parse_wheel_filename(wheel.name)[0])
        if name in out:
            raise ValueError(f"two wheels of {name} in {folder}: {out[name].name}, {wheel.name} "
                             "(keep one version of each: two stop the install)")
        out[name] = wheel
    return out


def check_wheels(folder: Path) -> tuple[list[str], list[str]]:
    """(report lines, problems) of the wheel set in ``folder`` and ``folder/fallback``."""
    report, problems = [], []
    image = read_names(HERE / "image_packages.txt")
    sets = {"main": (read_pins(HERE / "wheels.txt"), folder),
            "fallback": (read_pins(HERE / "fallback.txt"), folder / "fallback")}
    versions: dict[str, dict[str, Version]] = {}
    paths: dict[str, list[Path]] = {}
    for kind, (pins, where) in sets.items():
        try:
            found = _wheels(where) if where.is_dir() else {}
        except ValueError as error:
            problems.append(str(error))
            continue
        versions[kind], paths[kind] = {}, []
        for pin in pins:
            name = canonicalize_name(pin.name)
            wheel = found.pop(name, None)
            if wheel is None:
                problems.append(f"{kind}: no wheel of {pin} in {where}")
                continue
            _, version, _, wheel_tags = parse_wheel_filename(wheel.name)
            versions[kind][name] = version
            paths[kind].append(wheel)
            if version != pinned_version(pin):
                problems.append(f"{kind}: {wheel.name} is not the pinned {pin}")
            if not wheel_tags & TARGET_TAGS:
                problems.append(f"{kind}: {wheel.name} does not install on CPython 3.12 / Linux x86-64")
            report.append(f"{kind:8s} {wheel.name} ({wheel.stat().st_size / 2**20:.2f} MiB)")
        for name, wheel in found.items():
            problems.append(f"{kind}: {wheel.name} in {where} is not pinned in {kind} list")
    main = versions.get("main", {})
    for wheel in paths.get("main", []) + paths.get("fallback", []):
        for req in wheel_requirements(wheel):
            if applies(req, TARGET_ENV):
                problems += _unmet(req, wheel.name, main, image)
    for req in runtime_requirements(build=True):
        if applies(req, TARGET_ENV):
            problems += _unmet(req, "pyproject.toml", main, image)
    return report, problems


def _unmet(req: Requirement, who: str, main: dict[str, Version], image: set[str]) -> list[str]:
    name = canonicalize_name(req.name)
    if name in main:
        if not req.specifier.contains(main[name], prereleases=True):
            return [f"{who} needs {req}, the carried wheel is {name} {main[name]}"]
        return []
    if name in image:
        return []  # the image's version is checked on the machine (deps.py installed)
    return [f"{who} needs {req}: neither carried nor in image_packages.txt"]


def differences_from_here() -> list[str]:
    """Pins that differ from the version installed in this interpreter (the CI-like environment
    the wheels are meant to mirror); not a problem, but worth a look when the environment moved."""
    out = []
    for pin in read_pins(HERE / "wheels.txt") + read_pins(HERE / "fallback.txt"):
        try:
            have = metadata.version(pin.name)
        except metadata.PackageNotFoundError:
            out.append(f"{pin} is pinned, but not installed in {sys.executable}")
            continue
        if Version(have) != pinned_version(pin):
            out.append(f"{pin} is pinned, {sys.executable} has {have}")
    return out


def check_installed(folder: Path) -> tuple[list[str], list[str], int]:
    """(unmet requirements, fallback wheels that meet some, exit status) in this interpreter."""
    fallbacks = _wheels(folder / "fallback") if (folder / "fallback").is_dir() else {}
    reqs = [(w.name, r) for w in _wheels(folder).values() for r in wheel_requirements(w)]
    reqs += [("pyproject.toml", r) for r in runtime_requirements(build=True)]
    unmet, needed = [], []
    for who, req in reqs:
        if not applies(req, None):
            continue
        name = canonicalize_name(req.name)
        try:
            have: Optional[str] = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            have = None
        if have is not None and req.specifier.contains(have, prereleases=True):
            continue
        unmet.append(f"{who} needs {req}, installed: {have or 'none'}")
        fallback = fallbacks.get(name)
        if fallback is not None and req.specifier.contains(parse_wheel_filename(fallback.name)[1],
                                                           prereleases=True):
            if fallback not in needed:
                needed.append(fallback)
        else:
            needed.append(None)
    if not unmet:
        status = 0
    else:
        status = 1 if None in needed else 3
    return unmet, [w for w in needed if w is not None], status


def main(argv: Optional[list] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["wheels", "installed"])
    parser.add_argument("folder", type=Path, help="the wheel folder (.whl)")
    args = parser.parse_args(argv)
    if args.mode == "wheels":
        report, problems = check_wheels(args.folder)
        for line in report:
            print(line)
        for line in differences_from_here():
            print(f"note: {line}")
        for line in problems:
            print(f"PROBLEM: {line}")
        print(f"{len(report)} wheels, {len(problems)} problems")
        return 1 if problems else 0
    unmet, fallbacks, status = check_installed(args.folder)
    for line in unmet:
        print(f"unmet: {line}", file=sys.stderr)
    for wheel in fallbacks:
        print(wheel)
    print(f"deps.py installed: {len(unmet)} unmet requirements, {len(fallbacks)} fallback wheels "
          "meet some", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
