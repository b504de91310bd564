"""``python -m hepms.generate ...``: the same as ``hepms generate ...``."""
from hepms.generate.cli import main

# The guard matters: spawned worker processes re-import the main module under another name.
if __name__ == "__main__":
    raise SystemExit(main())
