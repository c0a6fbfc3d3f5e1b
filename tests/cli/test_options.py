"""Options declared once: the options dataclasses give the argparse arguments, read TOML
with defaults, reject unknown keys with the valid ones; commands are modules whose
``run([...])`` works in-process; the parser stays light."""

import phasenet  # noqa: F401  (first: cctbx import order)

import dataclasses
import subprocess
import sys

import pytest

from phasenet import BuildOptions, EvaluateOptions, SynthOptions
from phasenet.cli import COMMANDS, EXIT_ERROR, EXIT_OK, build_parser, main
from phasenet.cli.common import Default, given_options
from phasenet.options import OptionsError, option_meta

OPTION_CLASSES = {"build": BuildOptions, "synth": SynthOptions, "evaluate": EvaluateOptions}


def subparser(name):
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return sub.choices[name]


@pytest.mark.parametrize("command", sorted(OPTION_CLASSES))
def test_every_flag_of_the_dataclass_is_an_argument_with_its_help(command):
    cls = OPTION_CLASSES[command]
    actions = {s: a for a in subparser(command)._actions for s in a.option_strings}
    declared = 0
    for f in dataclasses.fields(cls):
        meta = option_meta(f)
        entries = [(meta, f.name)] if meta["flags"] else []
        entries += [(sub, None) for sub in meta["nested"].values()]
        for m, dest in entries:
            declared += 1
            for flag in m["flags"]:
                a = actions[flag]
                assert a.help == m["help"]
                if dest:
                    assert a.dest == dest
                for key in ("choices", "metavar", "nargs"):
                    if key in m["argparse"]:
                        assert getattr(a, key) == m["argparse"][key]
    assert declared >= 7


def test_help_shows_the_dataclass_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default 8-50)" in text and "(default [0.005, 0.06])" in text
    assert "(default S,Cl,Br,I,P,Cu)" in text and "(default dense)" in text
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    from phasenet.baselines.charge_flipping import ChargeFlippingOptions

    cf = ChargeFlippingOptions()
    assert f"seconds per run (default {cf.time_limit})" in text
    assert f"phase transition (default {cf.max_attempts})" in text
    assert "(default 300.0)" in text


def test_options_given_on_the_command_line_only():
    p = subparser("build")
    ns = p.parse_args(["x.cif", "-o", "o.h5", "--r2-max", "50", "--no-observations",
                       "--compression", "none"])
    assert isinstance(ns.max_index, Default) and str(ns.max_index) == "10"
    assert given_options(BuildOptions, ns) == {"r2_max": 50, "read_observations": False,
                                               "compression": "none"}
    o = BuildOptions.from_dict(given_options(BuildOptions, ns))
    assert (o.r2_max, o.read_observations, o.compression, o.max_index) == (50, False, None, 10)
    ns = subparser("evaluate").parse_args(["d.h5", "-o", "r", "--cf-attempts", "2", "--d-min", "1.5",
                                           "--method", "true"])
    o = EvaluateOptions.from_dict(given_options(EvaluateOptions, ns))
    assert o.charge_flipping.max_attempts == 2 and o.d_min == (1.5,) and o.methods == ("true",)
    assert o.charge_flipping.time_limit == EvaluateOptions().charge_flipping.time_limit


def test_from_dict_and_toml(tmp_path):
    o = SynthOptions.from_dict({"atoms": [6, 12], "space_groups": ["P21/c"], "u_iso": [0.01, 0.02],
                                "heavy_elements": "Br,I", "compression": "none"})
    assert o.atoms == (6, 12) and o.space_groups == ("P21/c",) and o.u_iso == (0.01, 0.02)
    assert o.heavy_elements == ("Br", "I") and o.compression is None
    assert o.non_default() == {"atoms": (6, 12), "space_groups": ("P21/c",), "u_iso": (0.01, 0.02),
                               "heavy_elements": ("Br", "I"), "compression": None}
    with pytest.raises(OptionsError) as e:
        BuildOptions.from_dict({"r2max": 50, "seed": 1})
    assert str(e.value).startswith("Unknown option(s) ['r2max'] for build; valid options are: max_index, "
                                   "r2_max, normalisation")
    with pytest.raises(OptionsError, match=r"r2_max = '50': must be an integer"):
        BuildOptions.from_dict({"r2_max": "50"})
    with pytest.raises(OptionsError, match=r"u_iso = \[0.1\]: must be a list of 2 values"):
        SynthOptions.from_dict({"u_iso": [0.1]})
    with pytest.raises(OptionsError, match=r"charge_flipping: Unknown option\(s\) \['tries'\] for "
                       r"ChargeFlippingOptions; valid options are: max_attempts"):
        EvaluateOptions.from_dict({"charge_flipping": {"tries": 3}})
    f = tmp_path / "o.toml"
    f.write_text('normalisation = "wilson"\ntest_fraction = 2\n')
    with pytest.raises(OptionsError, match=r"o.toml: test_fraction must be in \[0, 1\]"):
        BuildOptions.from_toml(f)
    f.write_text('normalisation = "wilson"\nr2_max = 50\ndefault_u = 1\n')
    o = BuildOptions.from_toml(f)
    assert (o.normalisation, o.r2_max, o.default_u, o.seed) == ("wilson", 50, 1.0, 0)
    assert isinstance(o.default_u, float)
    f.write_text("normalisation = \n")
    with pytest.raises(OptionsError, match="o.toml: not valid TOML"):
        BuildOptions.from_toml(f)


def test_commands_are_modules_with_run(tmp_path, capsys):
    assert [m.NAME for m in COMMANDS] == ["build", "info", "synth", "train", "evaluate", "solve", "merge",
                                          "slurm", "demo"]
    for m in COMMANDS:
        assert callable(m.add_arguments) and callable(m.run) and callable(m.execute)
    from phasenet.cli import build, info, synth

    junk = tmp_path / "junk.h5"
    junk.write_bytes(b"nothing")
    assert info.run([str(junk)]) == EXIT_ERROR
    assert "phasenet info: error:" in capsys.readouterr().err
    assert build.run([str(tmp_path / "none.cif"), "-o", str(tmp_path / "o.h5"), "--quiet"]) == EXIT_ERROR
    assert "input not found" in capsys.readouterr().err
    # inputs and output come from the command line or the recipe: without either, an error
    assert build.run(["--quiet"]) == EXIT_ERROR
    assert "required: INPUT, -o/--output" in capsys.readouterr().err
    assert synth.run(["-o", str(tmp_path / "s.h5")]) == EXIT_ERROR
    assert "required: -n" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        build.run(["--help"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("usage: phasenet build")
    assert main(["build", str(tmp_path / "none.cif"), "-o", str(tmp_path / "o.h5")]) == EXIT_ERROR


def test_parser_imports_nothing_heavy():
    """build_parser reads every option without the generator, the evaluation, numba,
    cctbx's crystal/solver modules or Keras; --help of every command likewise."""
    code = ("import sys, phasenet, phasenet.cli\n"
            "phasenet.cli.build_parser()\n"
            "heavy = ['phasenet.synth.generate', 'phasenet.evaluation.evaluate', 'phasenet.baselines.charge_flipping',"
            " 'numba', 'smtbx', 'cctbx.crystal', 'keras', 'tensorflow', 'jax']\n"
            "print([m for m in heavy if m in sys.modules])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "[]"
    r = subprocess.run([sys.executable, "-m", "phasenet.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == EXIT_OK and "build" in r.stdout and "slurm" in r.stdout
