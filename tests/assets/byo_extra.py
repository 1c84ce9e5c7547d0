"""A "bring your own" script that needs a package the image lacks (test asset).

tests/test_byo_script.py installs the package `hfgpu-byo-extra` (a wheel the test
builds) into the volume with HFGPU_PIP_REQUIREMENTS, then runs this script in later
containers, offline: the import must work with no sys.path edits.
"""

from __future__ import annotations

import hfgpu_byo_extra


def main() -> None:
    print(f"byo-extra: {hfgpu_byo_extra.VALUE} from {hfgpu_byo_extra.__file__}")


if __name__ == "__main__":
    main()
