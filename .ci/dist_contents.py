"""Lists what a built wheel or sdist carries and fails if it lacks the kernels (issue 27).

    python .ci/dist_contents.py DIST [--extension]

Prints the file count and the kernel files (csrc/ sources, the compiled synthcl_fast._C, _build_info.json). Exits
non-zero when a file of the repository's csrc/ is missing, or, with --extension (a wheel built with torch present),
when the compiled extension or its _build_info.json is.
"""

from __future__ import annotations

import argparse
import sys
import tarfile
import zipfile
from pathlib import Path, PurePosixPath

CSRC = Path(__file__).resolve().parents[1] / "csrc"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dist")
    parser.add_argument("--extension", action="store_true", help="require the compiled extension too")
    args = parser.parse_args()
    if args.dist.endswith(".whl"):
        names = [n for n in zipfile.ZipFile(args.dist).namelist() if not n.endswith("/")]
        csrc = "synthcl_fast/csrc"
    elif args.dist.endswith(".tar.gz"):
        with tarfile.open(args.dist) as archive:
            names = [member.name.split("/", 1)[1] for member in archive.getmembers() if member.isfile()]
        csrc = "csrc"
    else:
        sys.exit(f"{args.dist}: not a wheel (.whl) or an sdist (.tar.gz)")
    paths = [PurePosixPath(name) for name in names]
    sources = sorted(path.name for path in paths if str(path.parent) == csrc)
    extension = sorted(str(path) for path in paths
                       if str(path.parent) == "synthcl_fast" and path.name.startswith("_C.") and path.suffix == ".so")
    build_info = "synthcl_fast/_build_info.json" in names
    print(f"{PurePosixPath(args.dist).name}: {len(names)} files; kernel sources in {csrc}/: {', '.join(sources)}; "
          f"compiled extension: {', '.join(extension) or 'none'}; _build_info.json: {'yes' if build_info else 'no'}")
    missing = sorted({path.name for path in CSRC.iterdir() if path.is_file()} - set(sources))
    if missing:
        sys.exit(f"{args.dist}: no kernel sources {missing} in {csrc}/")
    if args.extension and not (extension and build_info):
        sys.exit(f"{args.dist}: no compiled extension synthcl_fast/_C*.so with its _build_info.json")


if __name__ == "__main__":
    main()
