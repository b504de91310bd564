"""PEP 517 backend of hepms: scikit-build-core, plus a clear message when it is missing.

hepms is built with ``pip install --no-build-isolation .`` (the kernels must be compiled against
the torch that will run them), so pip imports the backend from the user's environment. Without the
build tools that import fails with a bare ``No module named 'scikit_build_core'`` traceback; this
shim turns it into the command that fixes it. With the tools present it is scikit-build-core
unchanged.
"""
try:
    from scikit_build_core.build import *  # noqa: F401,F403
    from scikit_build_core.build import __all__  # noqa: F401
except ModuleNotFoundError as error:
    raise ImportError(
        f"hepms: the build tools are not installed in this Python environment ({error}).\n"
        "hepms is built without build isolation, so install them first:\n"
        '    pip install "scikit-build-core>=0.10" "pybind11>=2.12" "cmake>=3.26" ninja numpy\n'
        "    pip install --no-build-isolation .\n"
        "(see the README, 'Using it in your own environment')"
    ) from error
