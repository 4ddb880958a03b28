"""The profile schema (lib/schema.py): every knob refused before any work, in one sentence naming key and value."""

import copy
import json

import pytest

from lib import attributions, data, models, pipeline, profiles, schema, zoo
from lib.experiment import Context


@pytest.mark.parametrize("name", profiles.known())
def test_every_shipped_profile_validates_and_is_not_changed_by_it(name):
    prof = profiles.load(name)
    before = copy.deepcopy(prof)
    schema.validate(prof)
    assert prof == before  # validation never coerces: the hashed dict is the loaded one


def test_declared_names_match_the_modules_that_implement_them():
    assert schema.DATASETS == data.NAMES
    assert schema.ARCHS == models.ARCHS
    assert schema.METHODS == attributions.METHODS
    assert set(schema.SOURCES) == set(zoo.SOURCES)
    assert set(profiles.TRAIN_DEFAULTS) <= set(schema.Train.model_fields)
    assert set(profiles.EXTERNAL_KEYS) == set(schema.External.model_fields)


@pytest.mark.parametrize("overrides,sentence", [
    ({"attributions": {"n_images": -3}}, r"attributions\.n_images = -3 is not allowed: it must be >= 1\.$"),
    ({"attributions": {"ig": {"steps": "abc"}}}, r"attributions\.ig\.steps = 'abc' is not allowed: it must be an "
                                                  r"integer\.$"),
    ({"attributions": {"ig": 5}}, r"attributions\.ig = 5 is not allowed: it must be a mapping of its settings\.$"),
    ({"models": {"robust": {"eps": float("nan")}}}, r"models\.robust\.eps = nan is not allowed: it must be a finite "
                                                     r"number\.$"),
    ({"eval": {"steps": True}}, r"eval\.steps = True is not allowed: it must be an integer\.$"),
    ({"attributions": {"ig": {"rule": "simpson"}}}, r"'simpson' is not allowed: it must be 'trapezoid' or "
                                                     r"'gausslegendre'\.$"),
    ({"models": {"robust": {"epz": 1.0}}}, r"unknown setting 'models\.robust\.epz'; known at this level: .*eps"),
])
def test_a_bad_value_is_one_sentence_naming_key_value_and_what_is_allowed(overrides, sentence):
    with pytest.raises(ValueError, match=sentence) as err:
        profiles.load("smoke", overrides)
    assert "\n" not in str(err.value) and str(err.value).startswith("profile 'smoke' with its overrides: ")


def test_set_and_overrides_text_refuse_bad_values_and_malformed_text():
    with pytest.raises(ValueError, match=r"models\.robust\.eps = nan is not allowed"):
        profiles.load("smoke", profiles.parse_set(["models.robust.eps=.nan"]))
    with pytest.raises(ValueError, match=r"^OVERRIDES is not valid JSON or YAML \(.*line 1, column \d+\): write it"):
        profiles.load("smoke", '{"attributions": {"ig": {')
    with pytest.raises(ValueError, match=r"^--set 'models.robust=\{mode: pgd': the value is not valid YAML"):
        profiles.parse_set(["models.robust={mode: pgd"])


def test_keys_other_helpers_add_are_accepted_and_still_typed():
    prof = copy.deepcopy(profiles.load("smoke"))
    prof.update(seeds=3, claims={"alignment": {"min_spearman": 0.5}})
    prof["train"].update(joint="auto", labels="shuffled")
    prof["fid"].update(kid={"subsets": 10}, budget_steps=[10, 20])
    prof["attributions"].update(sanity={"layers": 2}, faithfulness={"fractions": [0.1, 0.2]})
    schema.validate(prof)
    for joint in (True, False, "true", "false"):
        schema.validate({**prof, "train": {**prof["train"], "joint": joint}})
    for bad, match in (({"seeds": 0}, r"seeds = 0 .* >= 1"), ({"train": {"labels": "random"}}, "'shuffled'"),
                       ({"train": {"joint": "maybe"}}, r"train\.joint = 'maybe' .* true or false or 'auto'")):
        with pytest.raises(ValueError, match=match):
            schema.validate(profiles.merge(prof, bad))


def test_context_refuses_a_bad_override_before_creating_folders(tmp_path):
    with pytest.raises(ValueError, match=r"attributions\.n_images = -3"):
        Context("smoke", "cpu", str(tmp_path / "run"), str(tmp_path / "figs"), overrides='{"attributions": '
                '{"n_images": -3}}')
    assert not (tmp_path / "run").exists()


def test_pipeline_refuses_a_bad_set_with_one_line_and_keeps_earlier_metrics(tmp_path, capsys):
    metrics = tmp_path / "run" / "metrics" / "02_attributions.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"metrics": {"n_images": 16}}))
    before = metrics.read_bytes()
    rc = pipeline.main(["--profile", "smoke", "--run-dir", str(tmp_path / "run"), "--fig-dir", str(tmp_path / "f"),
                        "--set", "attributions.n_images=-3"])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "attributions.n_images = -3 is not allowed" in err
    assert metrics.read_bytes() == before
    assert not (tmp_path / "run" / "notebooks").exists()
