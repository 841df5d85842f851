"""Build here the wheels a GPU image lacks to run peftsum, for a machine that cannot download.

Starting from the requirements of peftsum's own wheel (built from this checkout), every requirement the image
does not hold (``image.txt`` beside this file) is downloaded as a wheel for the image's Python and platform, or
built as a pure-Python wheel where PyPI has only a source archive (rouge-score), and its own requirements are
followed the same way; a requirement the image holds is not followed (the image holds its needs too).  Markers are
read for the image's Python on Linux x86-64; extras are not followed.

    python benchmarks/device/wheelhouse.py [--out .whl] [--python-version 3.12]

Writes the wheels to ``--out`` (emptied first), ``from-image.txt`` there (the requirements the image is relied on
for, as peftsum's closure states them) and prints each wheel and the total size; fails above 60 MB.  Then, on the
GPU machine, ``bash benchmarks/device/run.sh`` (docs/performance.md, "A GPU run in one command").
"""

from __future__ import annotations

import argparse
import email.parser
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
LIMIT_MB = 60
# manylinux tags the image's glibc takes (pip matches each exactly); pure-Python wheels ("any") match too
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64", "manylinux2014_x86_64",
             "manylinux1_x86_64"]


def image_packages(path: Path = HERE / "image.txt") -> dict[str, str | None]:
    """{canonical name: pinned version or None} of the image's packages."""
    out = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            out[canonicalize_name(name)] = version or None
    return out


def requirements(wheel: Path, environment: dict) -> list[Requirement]:
    """A wheel's own requirements that apply in ``environment`` (no extras)."""
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.parser.Parser().parsestr(z.read(meta).decode())
    reqs = [Requirement(r) for r in message.get_all("Requires-Dist") or []]
    return [r for r in reqs if r.marker is None or r.marker.evaluate({**environment, "extra": ""})]


def _pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True, stdout=subprocess.DEVNULL)


def fetch(req: Requirement, out: Path, python_version: str) -> Path:
    """The newest wheel of ``req`` for the image (its Python, Linux x86-64), or one built from its source."""
    before = set(out.glob("*.whl"))
    spec = f"{req.name}{req.specifier}"
    try:
        _pip("download", "-q", "--no-deps", "--only-binary=:all:", "--python-version", python_version,
             "--implementation", "cp", *[a for p in PLATFORMS for a in ("--platform", p)], "-d", str(out), spec)
    except subprocess.CalledProcessError:  # no wheel on PyPI: build a pure-Python one from the source archive
        _pip("wheel", "-q", "--no-deps", "-w", str(out), spec)
    (new,) = set(out.glob("*.whl")) - before
    if not new.name.endswith("-none-any.whl") and f"cp{python_version.replace('.', '')}" not in new.name:
        raise SystemExit(f"{new.name}: not a wheel the image's Python {python_version} takes")
    return new


def build(out: Path, python_version: str) -> tuple[list[Path], list[Requirement]]:
    """The wheelhouse in ``out``: peftsum's wheel and every requirement the image lacks, followed through their
    own; and the requirements left to the image."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:  # built from a copy: the checkout gets no build/ or egg-info from it
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(ROOT / name, tmp)
        shutil.copytree(ROOT / "peftsum", Path(tmp) / "peftsum", ignore=shutil.ignore_patterns("__pycache__"))
        _pip("wheel", "-q", "--no-deps", "-w", str(out), tmp)
    (own,) = out.glob("peftsum-*.whl")
    environment = {**default_environment(), "python_version": python_version,
                   "python_full_version": f"{python_version}.0", "sys_platform": "linux",
                   "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix"}
    image = image_packages()
    wheels, from_image, seen = [own], [], {"peftsum"}
    todo = requirements(own, environment)
    while todo:
        req = todo.pop(0)
        name = canonicalize_name(req.name)
        if name in seen:
            continue
        seen.add(name)
        if name in image:
            from_image.append(req)
            continue
        wheel = fetch(req, out, python_version)
        wheels.append(wheel)
        todo += requirements(wheel, environment)
    (out / "from-image.txt").write_text("".join(f"{r}\n" for r in from_image))
    return wheels, from_image


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=ROOT / ".whl")
    p.add_argument("--python-version", default="3.12", help="the image's Python (3.12.3 on the lent GPU machines)")
    a = p.parse_args()
    wheels, from_image = build(a.out, a.python_version)
    total = sum(w.stat().st_size for w in wheels)
    for w in sorted(wheels):
        print(f"{w.stat().st_size / 2**20:7.2f} MB  {w.name}")
    print(f"{len(wheels)} wheels, {total / 2**20:.1f} MB in {a.out}; from the image: "
          + ", ".join(sorted(canonicalize_name(r.name) for r in from_image)))
    if total > LIMIT_MB * 2**20:
        raise SystemExit(f"the wheelhouse is {total / 2**20:.1f} MB, over {LIMIT_MB} MB")


if __name__ == "__main__":
    main()
