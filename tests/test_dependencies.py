"""constraints.txt (the tested dependency set) agrees with pyproject.toml and scripts/setup.sh.

See docs/dependencies.md. The pins themselves come from ``pip freeze``; this checks that they
cover every declared dependency, that the loose ranges in pyproject.toml admit them, and that
setup.sh installs through the file.
"""

from __future__ import annotations

import re
import tomllib

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .conftest import ROOT


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for line in (ROOT / "constraints.txt").read_text("utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)", line)
        assert m, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        name = canonicalize_name(m[1])
        assert name not in pins, f"constraints.txt pins {name} twice"
        pins[name] = Version(m[2])
    return pins


def test_constraints_pin_every_declared_dependency_inside_its_range() -> None:
    pins = _pins()
    assert "offswitch" not in pins
    project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))["project"]
    declared = [*project["dependencies"], *project["optional-dependencies"]["dev"]]
    for spec in map(Requirement, declared):
        name = canonicalize_name(spec.name)
        assert name in pins, f"constraints.txt has no pin for {spec.name}"
        assert spec.specifier.contains(pins[name], prereleases=True), (
            f"pyproject.toml's {spec} does not admit the pinned {name}=={pins[name]}"
        )


def test_setup_script_installs_through_the_constraints() -> None:
    pins = _pins()
    script = (ROOT / "scripts" / "setup.sh").read_text("utf-8")
    installs = re.findall(r"pip install((?:\\\n|[^\n])*)", script)
    assert len(installs) == 2 and all("-c constraints.txt" in i for i in installs), installs
    for pinned in re.findall(r'"([a-z0-9-]+==[^"]+)"', script):  # "torch==2.13.0", ...
        req = Requirement(pinned)
        name = canonicalize_name(req.name)
        assert req.specifier.contains(pins[name]), f"setup.sh installs {req}, pinned {pins[name]}"
