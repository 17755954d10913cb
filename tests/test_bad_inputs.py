"""Bad command lines are refused with one message, the right exit code, and no trace.

A table of ``(argv, exit code, stderr regex)`` cases run through ``diffjax.app.cli.main``
in-process. For each refused command:

- the exit code is 2 for a usage error (bad flag, config, value, path) and 1 for a
  runtime failure (a locked workdir);
- stderr names the problem (the regex), holds exactly one ``diffjax <cmd>: error:`` line
  and no traceback;
- every workdir the command names is byte-for-byte unchanged (files and directories);
  a workdir that did not exist still does not.

Cases the library does not (yet) handle well are strict xfails whose reason says what
happens instead. Workdir cases share one module-scoped copy of ``tiny_trained_workdir``;
a case that changes it (an xfail) gets it restored before the next case runs.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import socket
import subprocess
import sys
from dataclasses import dataclass

import pytest

import diffjax.app.cli
from diffjax.app.cli import main

TINY = "experiments/configs/digits.py:tiny"
QUIET = "--config.training.progress_bar=False"
ERROR_LINE = re.compile(r"^diffjax \S+: error: ", re.MULTILINE)
LOCK_MODULE = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "diffjax", "training", "workdir_lock.py",
)

# Config files the cases name as {cfg:NAME}; written into tmp_path before each case.
CONFIG_FILES = {
    # The syntax error is on line 3, so the message must name line 3.
    "syntax_error.py": "import ml_collections\n\ndef get_config(:\n    pass\n",
    "no_get_config.py": "import ml_collections\n\nCONFIG = ml_collections.ConfigDict()\n",
    "returns_dict.py": "def get_config():\n    return {'training': {'num_steps': 1}}\n",
    "raises.py": "raise RuntimeError('boom at import')\n",
}


# --------------------------------------------------------------------------- helpers


def digest(path: str) -> dict[str, str | None]:
    """Every directory (value None) and file (sha256 of its bytes) under ``path``.

    Keys are relative paths (directories end in '/'); a plain file digests to
    ``{'.': its sha256}``.
    """

    def file_hash(name: str) -> str:
        with open(name, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()

    if os.path.isfile(path):
        return {".": file_hash(path)}
    out: dict[str, str | None] = {}
    for root, _dirs, files in os.walk(path):
        rel = os.path.relpath(root, path)
        out[rel + "/"] = None
        for name in files:
            out[os.path.normpath(os.path.join(rel, name))] = file_hash(os.path.join(root, name))
    return out


def describe_change(before: dict, after: dict) -> str:
    """'' if the digests are equal, else the paths added, removed and changed."""
    if before == after:
        return ""
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(k for k in set(before) & set(after) if before[k] != after[k])
    return f"added {added}, removed {removed}, changed {changed}"


@dataclass
class Case:
    argv: list[str]
    code: int
    pattern: str
    # Follow-up command that must then succeed (rc 0), with the same placeholders.
    then: list[str] | None = None
    # Hold the workdir lock ({wd}/train.lock) from a child process during the command.
    locked: bool = False
    # argparse refuses it: main raises SystemExit(2) instead of returning.
    argparse: bool = False


def case(case_id, argv, code, pattern, *, xfail=None, **kwargs):
    marks = [pytest.mark.xfail(strict=True, reason=xfail)] if xfail else []
    return pytest.param(Case(list(argv), code, pattern, **kwargs), id=case_id, marks=marks)


def train(*overrides, workdir="{fresh}", config=TINY):
    return ["train", "--config", config, "--workdir", workdir, QUIET, *overrides]


def sample(*flags, labels=True):
    """A fast sample command on the shared workdir (2 steps, one image, output in tmp)."""
    base = ["sample", "--workdir", "{wd}", "--steps", "2", "--out", "{tmp}/s.png"]
    if labels:
        base += ["--labels", "0", "--num-per-label", "1"]
    return base + list(flags)


CASES = [
    # ---------------------------------------------------------------- train, fresh workdir
    case("train-num-steps-negative", train("--config.training.num_steps=-5"), 2,
         r"training\.num_steps=-5: expected an int >= 1"),
    case("train-num-steps-zero", train("--config.training.num_steps=0"), 2,
         r"training\.num_steps=0: expected an int >= 1"),
    case("train-checkpoint-every-zero", train("--config.training.checkpoint_every=0"), 2,
         r"training\.checkpoint_every=0: expected an int >= 1"),
    case("train-log-every-zero", train("--config.training.log_every=0"), 2,
         r"training\.log_every=0: expected an int >= 1"),
    case("train-prediction-type-unknown", train("--config.diffusion.prediction_type=foo"), 2,
         r"diffusion\.prediction_type='foo': expected one of 'eps', 'x0', 'v'",
         then=train("--config.training.num_steps=2")),
    case("train-unknown-key-suggests", train("--config.model.chanels=3"), 2,
         r"unknown config key 'model\.chanels'; did you mean .*model\.base_channels"),
    case("train-batch-size-not-an-int", train("--config.training.batch_size=abc"), 2,
         r"'training\.batch_size' expects a int, got 'abc'"),
    case("train-learning-rate-nan", train("--config.optim.learning_rate=nan"), 2,
         r"optim\.learning_rate=nan: expected a finite number"),
    case("train-learning-rate-inf", train("--config.optim.learning_rate=1e999"), 2,
         r"optim\.learning_rate=inf: expected a finite number"),
    case("train-batch-larger-than-dataset", train("--config.training.batch_size=100000"), 2,
         r"training\.batch_size=100000 exceeds the 1438 training images"),
    case("train-batch-not-divisible-by-devices", train("--config.training.batch_size=33"), 2,
         r"training\.batch_size=33 is not divisible by the 2 devices"),
    case("train-grad-accum-does-not-divide", train("--config.training.grad_accum_steps=3"), 2,
         r"training\.batch_size=32: expected a multiple of training\.grad_accum_steps=3"),
    case("train-override-without-value", train("--config.training.num_steps"), 2,
         r"override '--config\.training\.num_steps' must look like key\.path=value"),
    case("train-unknown-data-name", train("--config.data.name=nosuch"), 2,
         r"data\.name='nosuch': expected one of 'digits'"),
    case("train-negative-seed", train("--config.training.seed=-1"), 2,
         r"training\.seed=-1: expected an int in \[0, "),
    case("train-config-file-missing", train(config="{tmp}/missing.py"), 2,
         r"config file '[^']*missing\.py' does not exist"),
    case("train-config-syntax-error", train(config="{cfg:syntax_error.py}"), 2,
         r"config file '[^']*syntax_error\.py', line 3: syntax error"),
    case("train-config-without-get-config", train(config="{cfg:no_get_config.py}"), 2,
         r"config file '[^']*no_get_config\.py' defines no get_config\(\)"),
    case("train-config-returns-dict", train(config="{cfg:returns_dict.py}"), 2,
         r"get_config\(\) of '[^']*returns_dict\.py' returned dict, not a ConfigDict"),
    case("train-config-raises-on-import", train(config="{cfg:raises.py}"), 2,
         r"config file '[^']*raises\.py' failed to run: RuntimeError: boom at import"),
    case("train-unknown-variant", train(config="experiments/configs/digits.py:huge"), 2,
         r"unknown digits config variant 'huge'; known: 'tiny'"),
    case("train-step-in-fresh-workdir", [*train(), "--step", "3"], 2,
         r"--step 3: '[^']*fresh' has no checkpoints to resume"),
    case("train-workdir-is-a-file", train(workdir="{tmp}/a_file"), 2, r"workdir.*a_file"),
    # ---------------------------------------------------------------- train, trained workdir
    case("train-resume-other-model", train("--config.model.base_channels=32", workdir="{wd}"),
         2, r"holds a checkpoint from another configuration.*\n.*model\.base_channels: "
            r"checkpoint has 16, config has 32"),
    case("train-resume-other-optimizer",
         train("--config.optim.grad_clip_norm=0", workdir="{wd}"), 2,
         r"holds another model or optimizer than this config builds(.|\n)*opt_state\.",
         then=sample()),
    case("train-step-missing", [*train(workdir="{wd}"), "--step", "999"], 2,
         r"no checkpoint at step 999 in .*; it holds steps \[4\]"),
    case("train-step-negative", [*train(workdir="{wd}"), "--step", "-1"], 2,
         r"step=-1 must be >= 0"),
    case("train-workdir-locked", train(workdir="{wd}"), 1,
         r"is in use by another `diffjax train`: pid {lock_pid} on host '{host}'",
         locked=True),
    # ---------------------------------------------------------------- sample
    case("sample-eta-negative", sample("--eta", "-1"), 2, r"eta must be a finite number >= 0"),
    case("sample-eta-nan", sample("--eta", "nan"), 2, r"eta must be a finite number >= 0.*nan"),
    case("sample-eta-for-sampler-without-eta", sample("--eta", "0.5", "--sampler", "dpm++2m"),
         2, r"eta=0\.5 was given, but sampler='dpm\+\+2m' takes no eta"),
    case("sample-guidance-nan", sample("--guidance", "nan"), 2,
         r"guidance_scale must be a finite number, got guidance_scale=nan"),
    case("sample-guidance-inf", sample("--guidance", "inf"), 2,
         r"guidance_scale must be a finite number, got guidance_scale=inf"),
    case("sample-labels-empty", sample("--labels", "", labels=False), 2,
         r"--labels='' names no label"),
    case("sample-labels-not-ints", sample("--labels", "0,abc", labels=False), 2,
         r"--labels='0,abc' must be comma-separated integers"),
    case("sample-labels-out-of-range", sample("--labels", "99", labels=False), 2,
         r"labels \[99\] out of range \[0, 10\)"),
    case("sample-sampler-unknown", sample("--sampler", "nosuch"), 2,
         r"argument --sampler: unknown sampler='nosuch'", argparse=True),
    case("sample-sampler-grid-suffix-on-ddim", sample("--sampler", "ddim@logsnr"), 2,
         r"argument --sampler: sampler='ddim@logsnr': a grid suffix applies to", argparse=True),
    case("sample-steps-zero", sample("--steps", "0"), 2,
         r"num_steps must be an int >= 1 .*num_steps=0"),
    case("sample-steps-negative", sample("--steps", "-3"), 2,
         r"num_steps must be an int >= 1 .*num_steps=-3"),
    case("sample-checkpoint-step-missing", sample("--step", "12345"), 2,
         r"no checkpoint at step 12345 in .*; it holds steps \[4\]"),
    case("sample-workdir-missing", ["sample", "--workdir", "{fresh}"], 2,
         r"'[^']*fresh' is not a diffjax training workdir"),
    case("sample-workdir-without-config", ["sample", "--workdir", "{plain}"], 2,
         r"plain/config\.json not found: '[^']*plain' is not a diffjax training workdir"),
    case("sample-guidance-interval-one-value",
         sample("--guidance", "1", "--guidance-interval", "5"), 2,
         r"--guidance-interval='5' must be two comma-separated numbers LO,HI"),
    case("sample-guidance-interval-reversed",
         sample("--guidance", "1", "--guidance-interval", "9,1"), 2,
         r"--guidance-interval='9,1' needs LO <= HI"),
    case("sample-guidance-rescale-above-one",
         sample("--guidance", "1", "--guidance-rescale", "2"), 2,
         r"guidance_rescale must lie in \[0, 1\], got guidance_rescale=2\.0"),
    case("sample-guidance-rescale-without-guidance", sample("--guidance-rescale", "0.5"), 2,
         r"guidance_rescale and guidance_interval refine classifier-free guidance; "
         r"give a guidance_scale too"),
    case("sample-config-override", sample("--config.x=1"), 2,
         r"--config overrides apply to train, distill and demo only: \['--config\.x=1'\]"),
    case("sample-num-per-label-zero",
         ["sample", "--workdir", "{wd}", "--steps", "2", "--out", "{tmp}/s.png",
          "--labels", "0", "--num-per-label", "0"], 2, r"--num-per-label"),
    case("sample-upscale-zero", sample("--upscale", "0"), 2, r"--upscale"),
    # ---------------------------------------------------------------- evaluate / pareto
    case("evaluate-num-samples-zero", ["evaluate", "--workdir", "{wd}", "--num-samples", "0"],
         2, r"num_samples=0 is too few"),
    case("evaluate-two-guidance-scales", ["evaluate", "--workdir", "{wd}", "--guidance", "1,2"],
         2, r"--guidance='1,2': evaluate takes one scale"),
    case("evaluate-sampler-unknown", ["evaluate", "--workdir", "{wd}", "--sampler", "nosuch"],
         2, r"argument --sampler: unknown sampler='nosuch'", argparse=True),
    case("evaluate-inception-without-weights",
         ["evaluate", "--workdir", "{wd}", "--features", "inception"], 2,
         r"No FID Inception weights: pass a path or set DIFFJAX_INCEPTION_WEIGHTS"),
    case("evaluate-steps-zero", ["evaluate", "--workdir", "{wd}", "--steps", "0"], 2,
         r"--steps=0 must be >= 1"),
    case("evaluate-batch-size-zero", ["evaluate", "--workdir", "{wd}", "--batch-size", "0"], 2,
         r"--batch-size=0 must be >= 1"),
    case("evaluate-reference-stats-missing",
         ["evaluate", "--workdir", "{wd}", "--reference-stats", "/nonexistent/stats.npz"], 2,
         r"--reference-stats='/nonexistent/stats.npz' does not exist"),
    case("pareto-batch-size-zero", ["pareto", "--workdir", "{wd}", "--batch-size", "0"], 2,
         r"--batch-size=0 must be >= 1"),
    case("evaluate-config-override", ["evaluate", "--workdir", "{wd}", "--config.x=1"], 2,
         r"--config overrides apply to train, distill and demo only"),
    case("pareto-num-samples-zero", ["pareto", "--workdir", "{wd}", "--num-samples", "0"], 2,
         r"num_samples=0 is too few"),
    case("pareto-nfe-not-ints", ["pareto", "--workdir", "{wd}", "--nfe", "abc"], 2,
         r"--nfe='abc' must be comma-separated ints"),
    case("pareto-nfe-zero", ["pareto", "--workdir", "{wd}", "--nfe", "5,0"], 2,
         r"nfe must be >= 1, got nfe=0"),
    case("pareto-sampler-unknown", ["pareto", "--workdir", "{wd}", "--samplers", "ddim,nosuch"],
         2, r"--samplers: unknown sampler='nosuch'"),
]


# --------------------------------------------------------------------------- fixtures


class SharedWorkdir:
    """A copy of the trained tiny workdir, restored whenever a case changed it."""

    def __init__(self, source: str, path: str):
        self.source, self.path = source, path
        shutil.copytree(source, path)
        self.pristine = digest(path)

    def restore(self) -> None:
        if digest(self.path) != self.pristine:
            shutil.rmtree(self.path)
            shutil.copytree(self.source, self.path)
            assert digest(self.path) == self.pristine


@pytest.fixture(scope="module")
def shared(tiny_trained_workdir, tmp_path_factory):
    return SharedWorkdir(tiny_trained_workdir, str(tmp_path_factory.mktemp("bad") / "run"))


def _fast_classifier(monkeypatch):
    """Evaluate/pareto cases: a 30-step evaluation classifier instead of 500 steps.

    Only the speed of a command that (wrongly) trains one before refusing changes.
    """
    import diffjax.app.evaluate

    original = diffjax.app.evaluate.train_classifier

    def fast(*args, **kwargs):
        kwargs["num_steps"] = min(kwargs.get("num_steps", 30), 30)
        return original(*args, **kwargs)

    monkeypatch.setattr(diffjax.app.evaluate, "train_classifier", fast)


class _LockHolder:
    """A child process holding ``WorkdirLock(workdir)`` until its stdin closes.

    ``fcntl.flock`` locks belong to open file descriptions, so a second open in this
    process would conflict too; a child makes the holder a different, live pid, as with
    a real concurrent ``train``. The child loads workdir_lock.py alone (stdlib only).
    """

    CODE = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('wl', sys.argv[1])\n"
        "wl = importlib.util.module_from_spec(spec); spec.loader.exec_module(wl)\n"
        "lock = wl.WorkdirLock(sys.argv[2]); lock.acquire()\n"
        "print('locked', flush=True); sys.stdin.read(); lock.release()\n"
    )

    def __init__(self, workdir: str):
        self.proc = subprocess.Popen(
            [sys.executable, "-c", self.CODE, LOCK_MODULE, workdir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        line = self.proc.stdout.readline()
        if line.strip() != "locked":
            self.proc.kill()
            raise AssertionError(f"lock holder failed: {self.proc.stderr.read()}")

    def close(self) -> None:
        self.proc.stdin.close()
        try:
            assert self.proc.wait(timeout=30) == 0, self.proc.stderr.read()
        finally:
            if self.proc.poll() is None:
                self.proc.kill()


def _workdir_args(argv: list[str]) -> list[str]:
    return [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--workdir"]


def run_cli(argv: list[str], capsys, *, argparse: bool = False) -> tuple[int, str]:
    """Runs ``main(argv)``: its return value, or for ``argparse`` its SystemExit code."""
    capsys.readouterr()
    if argparse:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        code = exit_info.value.code
    else:
        code = main(argv)
    return code, capsys.readouterr().err


def check_one_message(err: str) -> None:
    assert len(ERROR_LINE.findall(err)) == 1, f"expected one 'diffjax <cmd>: error:' line:\n{err}"
    assert "Traceback" not in err, err


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("bad", CASES)
def test_bad_input_is_refused_cleanly(bad, shared, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(diffjax.app.cli.DEBUG_ENV, raising=False)
    monkeypatch.delenv("DIFFJAX_INCEPTION_WEIGHTS", raising=False)
    shared.restore()
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "notes.txt").write_text("not a workdir\n")
    (tmp_path / "a_file").write_text("a file, not a directory\n")
    for name, text in CONFIG_FILES.items():
        (tmp_path / name).write_text(text)
    values = {"wd": shared.path, "tmp": str(tmp_path), "fresh": str(tmp_path / "fresh"),
              "plain": str(tmp_path / "plain")}

    def expand(args: list[str]) -> list[str]:
        out = []
        for a in args:
            a = re.sub(r"\{cfg:([^}]+)\}", lambda m: str(tmp_path / m.group(1)), a)
            out.append(a.format(**values))
        return out

    argv = expand(bad.argv)
    if bad.argv[0] in ("evaluate", "pareto"):
        _fast_classifier(monkeypatch)
    workdirs = _workdir_args(argv)
    holder = _LockHolder(shared.path) if bad.locked else None
    try:
        # (with a holder, its train.lock is part of the workdir before and after)
        before = {w: digest(w) if os.path.exists(w) else None for w in workdirs}
        code, err = run_cli(argv, capsys, argparse=bad.argparse)
        after = {w: digest(w) if os.path.exists(w) else None for w in workdirs}
    finally:
        if holder is not None:
            holder.close()
    pattern = bad.pattern
    if holder is not None:
        pattern = pattern.format(lock_pid=holder.proc.pid, host=re.escape(socket.gethostname()))

    assert code == bad.code, f"exit code {code}, expected {bad.code}; stderr:\n{err}"
    assert re.search(pattern, err), f"stderr does not match {pattern!r}:\n{err}"
    check_one_message(err)
    for w in workdirs:
        if before[w] is None:
            assert after[w] is None, f"{w} was created by a refused command: {after[w].keys()}"
        else:
            change = describe_change(before[w], after[w])
            assert not change, f"{w} changed: {change}"

    if bad.then is not None:
        then = expand(bad.then)
        code, err = run_cli(then, capsys)
        assert code == 0, f"the corrected command {then} failed ({code}):\n{err}"
        if then[0] == "train":
            assert os.path.isdir(os.path.join(then[then.index("--workdir") + 1], "checkpoints"))
        else:
            assert os.path.isfile(str(tmp_path / "s.png"))
            for w in workdirs:
                change = describe_change(before[w], digest(w))
                assert not change, f"{w} changed: {change}"


def test_debug_env_prints_the_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv(diffjax.app.cli.DEBUG_ENV, "1")
    fresh = str(tmp_path / "fresh")
    code, err = run_cli(train("--config.training.num_steps=0", workdir=fresh), capsys)
    assert code == 2, err
    assert "Traceback (most recent call last)" in err, err
    assert "validate_config" in err, err  # where the error was raised
    assert len(ERROR_LINE.findall(err)) == 1, err
    assert re.search(r"training\.num_steps=0: expected an int >= 1", err), err
    assert not os.path.exists(fresh)


def _raise(exc):
    def cmd_sample(args):
        raise exc

    return cmd_sample


@pytest.mark.parametrize(
    "exc",
    [
        pytest.param(KeyError("params"), id="KeyError"),
        pytest.param(AttributeError("'NoneType' object has no attribute 'shape'"),
                     id="AttributeError"),
        pytest.param(ZeroDivisionError("division by zero"), id="ZeroDivisionError"),
    ],
)
def test_unexpected_exception_is_one_line_with_a_debug_hint(exc, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(diffjax.app.cli.DEBUG_ENV, raising=False)
    monkeypatch.setattr(diffjax.app.cli, "cmd_sample", _raise(exc))
    code, err = run_cli(["sample", "--workdir", str(tmp_path)], capsys)
    assert code == 1, err
    check_one_message(err)
    assert re.search(rf"^diffjax sample: error: {type(exc).__name__}: ", err, re.MULTILINE), err
    assert "DIFFJAX_DEBUG=1" in err, err


def test_the_table_is_large_enough():
    assert len(CASES) >= 35
    ids = [p.id for p in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"


# Summary for the closing note: 63 table cases (28 train, 22 sample, 8 evaluate, 5 pareto),
# none of them xfails any more (a --workdir that is a file, --num-per-label 0, --upscale 0
# and the evaluate/pareto refusals that used to write WORKDIR/eval/ first are refused before
# anything is loaded or written; train --step -1 is a usage error naming the step), plus
# the DIFFJAX_DEBUG traceback test and three unexpected-exception
# tests (KeyError, AttributeError, ZeroDivisionError: type name and DIFFJAX_DEBUG hint).
# test_the_table_is_large_enough checks NUM_CASES >= 35.
NUM_CASES = len(CASES)
