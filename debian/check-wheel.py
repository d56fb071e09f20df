"""The wheel holds every module control/native.py says mypyc compiles (and its group library).

setup.py installs pure Python when compiling fails, which is right for a developer's
checkout and wrong for the package: it must ship the compiled pipeline.
Usage: python3 debian/check-wheel.py WHEEL
"""

import runpy
import sys
import zipfile
from pathlib import Path

native = runpy.run_path(str(Path(__file__).resolve().parents[1] / "control" / "native.py"))
names = zipfile.ZipFile(sys.argv[1]).namelist()
want = [f"dynscreen/control/{m.replace('.', '/')}" for m in native["MODULES"]]
want.append(f"dynscreen/control/{native['GROUP']}__mypyc")
missing = [w for w in want if not any(n.startswith(w + ".cpython-") and n.endswith(".so")
                                      for n in names)]
if missing:
    sys.exit(f"check-wheel: {sys.argv[1]} lacks the compiled modules: {', '.join(missing)}"
             " (the mypyc build failed: see the build log)")
print(f"check-wheel: {len(want)} compiled modules present")
