"""Prints what CMakeLists.txt needs to know about the installed torch, as KEY=value lines.

When torch cannot be imported it says why on stderr (CMakeLists.txt shows it) and exits 1. The
usual cause is build isolation: ``pip install .`` builds in a temporary environment that has the
build tools but not the user's torch.
"""
import os
import sys


def _isolated() -> bool:
    # pip's isolated build environments live in pip-build-env-*; pypa/build's in build-env-*.
    return any("pip-build-env-" in p or f"{os.sep}build-env-" in p for p in sys.path)


try:
    import torch
    from torch.utils import cpp_extension
except ImportError as error:
    if _isolated():
        why = ("this build runs in pip's isolated build environment, which never has your torch "
               "(build isolation is on).")
    else:
        why = f"torch is not installed in {sys.executable}."
    sys.stderr.write(
        f"could not import torch ({error}): {why}\n"
        "hepms compiles its kernels against the torch installed where it will run.\n"
        "Install torch and the build tools, then build without isolation:\n"
        "    pip install torch==2.14.1        # or torch==2.13.0, the small CPU-only build\n"
        '    pip install "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja numpy\n'
        "    pip install --no-build-isolation .\n")
    sys.exit(1)

print(f"TORCH_VERSION={torch.__version__}")
print(f"TORCH_CUDA_VERSION={torch.version.cuda}")
print(f"TORCH_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}")
print("TORCH_INCLUDE_DIRS=" + ";".join(cpp_extension.include_paths()))
print(f"TORCH_LIB_DIR={os.path.join(os.path.dirname(torch.__file__), 'lib')}")
