"""A built wheel works outside the checkout: ``pip install`` (not editable) into a fresh venv,
then ``simfluence import`` and a ``simfluence fit`` that finds the bundled gin configs.

The wheel is built offline (``--no-build-isolation``) and installed with ``--no-deps``; the
fresh venv sees this interpreter's installed packages (JAX, gin, ...) through a path entry
appended after its own site-packages, so the package itself comes from the wheel only.
"""

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from simfluence_jax.importers import write_gptfluence
from simfluence_jax.synthetic import make_problem

ROOT = Path(__file__).resolve().parents[1]


def _sh(*cmd, **kwargs):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kwargs)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    return out


def _copy_checkout(dst: Path) -> None:
    """The files git would ship (tracked and new, not ignored), or the tree minus caches."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT, capture_output=True, text=True,
    )  # fmt: skip
    if listed.returncode == 0 and listed.stdout.strip():
        for name in listed.stdout.splitlines():
            src = ROOT / name
            if src.is_file():
                (dst / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst / name)
    else:
        ignore = shutil.ignore_patterns(".git", ".venv", "build", "dist", "*.egg-info", "outputs")
        shutil.copytree(ROOT, dst, ignore=ignore, dirs_exist_ok=True)


@pytest.mark.slow
def test_wheel_installs_and_finds_its_gin_configs(tmp_path):
    src, dist, venv, work = (tmp_path / d for d in ("src", "dist", "venv", "work"))
    _copy_checkout(src)
    _sh(sys.executable, "-m", "pip", "wheel", str(src), "--no-deps", "--no-build-isolation",
        "--disable-pip-version-check", "-q", "-w", str(dist))  # fmt: skip
    (wheel,) = dist.glob("simfluence_jax-*.whl")
    _sh(sys.executable, "-m", "venv", "--without-pip", str(venv))
    python = venv / "bin" / "python"
    purelib = _sh(str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])")
    deps = sysconfig.get_paths()["purelib"]  # this interpreter's packages, for the deps
    (Path(purelib.stdout.strip()) / "_simfluence_test_deps.pth").write_text(deps + "\n")
    _sh(sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
        "--no-index", "--disable-pip-version-check", "-q", str(wheel))  # fmt: skip

    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    where = _sh(str(python), "-c", "import simfluence_jax.cli as c; print(c.__file__); "
                "print(c.find_gin_file('quickstart.gin'))", cwd=work, env=env)  # fmt: skip
    module, gin_file = where.stdout.split()
    assert module.startswith(str(venv)) and gin_file.startswith(str(venv)), where.stdout

    runs = make_problem(num_train=20, num_test=4, num_runs=8, seed=0).runs
    write_gptfluence(runs, work / "logged", first_step=1)
    simfluence = str(venv / "bin" / "simfluence")
    out = _sh(simfluence, "import", "gptfluence", "logged", "--out", "imported", cwd=work, env=env)
    assert "RunSet(R=8" in out.stdout
    _sh(simfluence, "fit", "--gin_file", "quickstart.gin", "--runs", "imported", "--out", "sims",
        "--gin.FitConfig.num_fit=5", "--gin.FitConfig.num_val=1",
        "--gin.FitConfig.num_heldout=2", "--gin.FitConfig.simulators=('linear',)",
        cwd=work, env=env)  # fmt: skip
    assert (work / "sims" / "linear" / "meta.json").exists()
    operative = (work / "sims" / "operative_config.gin").read_text()
    assert "Experiment.title = 'simfluence_jax quickstart" in operative  # the bundled file
    assert "RunsConfig.num_runs = 32" in operative  # and the files it includes
