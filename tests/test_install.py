"""The build's own messages for the two ways the README's install commands go wrong: build tools
missing (no build isolation) and build isolation on (no torch in the build environment). The
commands themselves run in CI, as written, in a fresh venv: scripts/check_install.sh."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)


def test_missing_build_tools_say_what_to_install() -> None:
    # what pip does with --no-build-isolation: import the backend named in pyproject.toml
    result = run_python("import sys; sys.modules['scikit_build_core'] = None; sys.path.insert(0, 'cmake'); "
                        "import build_backend")
    assert result.returncode != 0
    message = result.stderr.strip().splitlines()
    assert any("the build tools are not installed" in line for line in message), result.stderr
    assert '    pip install "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja numpy' in message
    assert "    pip install --no-build-isolation ." in message


def test_backend_is_scikit_build_core_when_present() -> None:
    result = run_python("import sys; sys.path.insert(0, 'cmake'); import build_backend, scikit_build_core.build as b; "
                        "assert all(getattr(build_backend, n) is getattr(b, n) for n in b.__all__); "
                        "print(sorted(build_backend.__all__))")
    assert result.returncode == 0, result.stderr
    assert "build_wheel" in result.stdout and "build_editable" in result.stdout


def test_isolated_build_says_to_turn_isolation_off() -> None:
    # CMake runs cmake/torch_info.py with the build's Python; in pip's isolated environment its
    # sys.path has pip-build-env-* folders and no torch.
    code = ("import runpy, sys; sys.modules['torch'] = None; sys.path.append('/tmp/pip-build-env-abc/overlay'); "
            "runpy.run_path('cmake/torch_info.py', run_name='__main__')")
    result = run_python(code)
    assert result.returncode == 1
    assert "pip's isolated build environment" in result.stderr
    assert "pip install --no-build-isolation ." in result.stderr
    assert "scikit-build-core" in result.stderr  # and the build tools to install first
    # Not isolated, just no torch: says that instead.
    result = run_python("import runpy, sys; sys.modules['torch'] = None; "
                        "runpy.run_path('cmake/torch_info.py', run_name='__main__')")
    assert result.returncode == 1 and "torch is not installed in" in result.stderr
    assert "pip install torch==2.14.1" in result.stderr


def test_torch_info_prints_what_cmake_reads() -> None:
    result = subprocess.run([sys.executable, "cmake/torch_info.py"], capture_output=True, text=True, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    keys = {line.split("=", 1)[0] for line in result.stdout.splitlines()}
    assert {"TORCH_VERSION", "TORCH_CUDA_VERSION", "TORCH_CXX11_ABI", "TORCH_INCLUDE_DIRS", "TORCH_LIB_DIR"} <= keys
