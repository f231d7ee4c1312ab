"""Every shipped recipe is valid before anyone spends an hour on it, and every recipe the README names exists:
fit recipes parse through LightningCLI, sweep recipes pass the sweep's own up-front checks (each arm parsed and its
model built at every width), toy recipes parse through the `toy` subcommand."""
import contextlib
import glob
import io
import math
import os
import re

import pytest
import yaml

from widthlab.cli import main
from widthlab.lightning_cli import run_lightning_cli
from widthlab.sweep import plan, validate

RECIPES = sorted(glob.glob(os.path.join(os.path.dirname(os.path.dirname(__file__)), "recipes", "*.yaml")))


def kind(path: str) -> str:
    doc = yaml.safe_load(open(path))
    return "sweep" if "recipe" in doc else "fit" if "trainer" in doc else "toy"


def test_every_recipe_the_readme_names_exists():
    readme = open("README.md").read()
    named = set(re.findall(r"recipes/[\w.]+\.yaml", readme))
    table = re.findall(r"^\| `(\w+\.yaml)`(?: \+ `(\w+\.yaml)`)?", readme, flags=re.M)  # the recipe table's rows
    named |= {f"recipes/{n}" for row in table for n in row if n}
    for stem, stages in re.findall(r"`(\w+)_\{([\w,]+)\}\.yaml`", readme):  # `fineweb_{sweep,arms}.yaml`
        named |= {f"recipes/{stem}_{x}.yaml" for x in stages.split(",")}
    assert len(named) >= 8
    missing = sorted(n for n in named if not os.path.isfile(n))
    assert not missing, missing
    # and the table lists every recipe that ships
    assert {f"recipes/{os.path.basename(p)}" for p in RECIPES} <= named


@pytest.mark.parametrize("path", RECIPES, ids=os.path.basename)
def test_recipe_is_valid(path, tmp_path):
    rel = os.path.relpath(path)
    out = io.StringIO()
    if kind(path) == "fit":
        with contextlib.redirect_stdout(out):
            with pytest.raises(SystemExit) as e:
                run_lightning_cli(["fit", "--config", rel, "--print_config"])
        assert e.value.code in (0, None) and "d_model" in out.getvalue()
    elif kind(path) == "sweep":
        doc = yaml.safe_load(open(path))
        points = plan(doc["recipe"], doc["widths"], doc["seeds"], doc.get("arms") or {}, doc.get("overrides") or {},
                      str(tmp_path / doc["name"]))
        arms = doc.get("arms") or {"baseline": {}}  # an arm may list its own seeds
        grid = lambda ov: math.prod(len(v) for v in ((ov or {}).get("grid") or {}).values())  # sub-arms per arm
        assert len(points) == len(doc["widths"]) * sum(len((ov or {}).get("seeds", doc["seeds"])) * grid(ov)
                                                       for ov in arms.values())
        validate(points)
        assert not (tmp_path / doc["name"]).exists()  # validating writes nothing
    else:
        with contextlib.redirect_stdout(out):
            with pytest.raises(SystemExit) as e:
                main(["toy", "--config", rel, "--print_config"])
        assert e.value.code in (0, None) and "gammas" in out.getvalue()
