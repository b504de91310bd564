"""The preparation of the first GPU run (scripts/device_wheels.sh, scripts/device_check.sh,
scripts/device/): the carried wheel pins against pyproject.toml, and the requirement check that
picks fallback wheels on the GPU machine. No network, no GPU, no wheels downloaded."""
from __future__ import annotations

import importlib.util
import subprocess
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
DEVICE = REPO / "scripts" / "device"


@pytest.fixture(scope="module")
def deps():
    pytest.importorskip("tomllib")
    spec = importlib.util.spec_from_file_location("device_deps", DEVICE / "deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_pins_cover_the_runtime_dependencies(deps):
    # A new dependency in pyproject.toml must travel as a wheel or come with the machine's image;
    # a pinned wheel must satisfy pyproject's range.
    main = {canonicalize_name(p.name): deps.pinned_version(p) for p in deps.read_pins(DEVICE / "wheels.txt")}
    image = deps.read_names(DEVICE / "image_packages.txt")
    for req in deps.runtime_requirements():
        name = canonicalize_name(req.name)
        if name in main:
            assert req.specifier.contains(main[name]), f"{DEVICE / 'wheels.txt'}: {name}=={main[name]} is outside pyproject's {req}"
        else:
            assert name in image, f"pyproject.toml needs {req}: pin it in {DEVICE / 'wheels.txt'}"


def test_pin_lists_are_consistent(deps):
    main = [canonicalize_name(p.name) for p in deps.read_pins(DEVICE / "wheels.txt")]
    fallback = [canonicalize_name(p.name) for p in deps.read_pins(DEVICE / "fallback.txt")]
    image = deps.read_names(DEVICE / "image_packages.txt")
    assert len(set(main)) == len(main) and len(set(fallback)) == len(fallback), "one version of each"
    assert not set(main) & image, "wheels.txt carries only what the image lacks"
    assert set(fallback) <= image, "a fallback replaces a package of the image"
    assert "torch" in image and "torch" not in main + fallback, "the machine's own torch builds and runs hepms"


def _fake_wheel(folder: Path, name: str, version: str, requires: list[str]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}-{version}-py3-none-any.whl"
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
    lines += [f"Requires-Dist: {r}" for r in requires]
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(f"{name}-{version}.dist-info/METADATA", "\n".join(lines) + "\n")
    return path


def test_installed_check_picks_fallbacks_and_reports_the_rest(deps, tmp_path, monkeypatch):
    _fake_wheel(tmp_path, "plotlib_user", "1.0", ["matplotlib>=3.11.1", "packaging>=23",
                                                   "oldpython_only; python_version < '3.0'"])
    fallback = _fake_wheel(tmp_path / "fallback", "matplotlib", "3.11.2", [])
    real_version = deps.metadata.version
    installed = {"matplotlib": "3.10.0", "packaging": "26.4"}

    def version(name: str) -> str:
        if name in installed:
            return installed[name]
        return real_version(name)  # pyproject's own dependencies: this environment's

    monkeypatch.setattr(deps.metadata, "version", version)
    unmet, fallbacks, status = deps.check_installed(tmp_path)
    assert unmet == ["plotlib_user-1.0-py3-none-any.whl needs matplotlib>=3.11.1, installed: 3.10.0"]
    assert fallbacks == [fallback] and status == 3

    _fake_wheel(tmp_path, "needs_missing", "1.0", ["no-such-package-anywhere>=1"])
    unmet, fallbacks, status = deps.check_installed(tmp_path)
    assert "needs_missing-1.0-py3-none-any.whl needs no-such-package-anywhere>=1, installed: none" in unmet
    assert status == 1

    installed["matplotlib"] = "3.11.2"
    (tmp_path / "needs_missing-1.0-py3-none-any.whl").unlink()
    assert deps.check_installed(tmp_path) == ([], [], 0)


@pytest.mark.parametrize("script", ["device_wheels.sh", "device_check.sh"])
def test_scripts_parse(script):
    result = subprocess.run(["bash", "-n", str(REPO / "scripts" / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
