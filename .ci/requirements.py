"""Print pyproject.toml's requirements (dependencies and the ``test`` extra), one per line,
leaving out the distributions named with ``--without``: ``make test-torch-floor`` installs
them beside another torch than the one the project pins."""
from __future__ import annotations

import argparse
import pathlib
import re
import sys
import tomllib

PYPROJECT = pathlib.Path(__file__).resolve().parent.parent / "pyproject.toml"


def distribution(requirement: str) -> str:
    """The distribution a requirement names, normalised as pip does (``psycopg[binary]>=3.1`` -> ``psycopg``)."""
    return re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9._-]+", requirement.strip()).group(0)).lower()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--without", nargs="*", default=[], help="distributions to leave out")
    args = parser.parse_args(argv)
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    requirements = project["dependencies"] + project["optional-dependencies"]["test"]
    left_out = {distribution(name) for name in args.without}
    unknown = left_out - {distribution(r) for r in requirements}
    if unknown:
        print(f"requirements.py: pyproject.toml names none of {sorted(unknown)}", file=sys.stderr)
        return 2
    seen = set()
    for requirement in requirements:
        name = distribution(requirement)
        if name not in left_out and name not in seen:
            seen.add(name)
            print(requirement)
    return 0


if __name__ == "__main__":
    sys.exit(main())
