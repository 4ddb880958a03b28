"""Profiles and their overrides: what `papermill -p OVERRIDES` and `lib.pipeline --set` change."""

import pytest

from lib import profiles
from lib.experiment import Context


def test_unknown_profile_lists_the_known_ones():
    with pytest.raises(ValueError, match="known profiles:.*smoke"):
        profiles.load("nope")


def test_override_changes_one_nested_knob_and_nothing_else():
    base = profiles.load("smoke")
    prof = profiles.load("smoke", {"attributions": {"ig": {"steps": 7}}})
    assert prof["attributions"]["ig"]["steps"] == 7
    prof["attributions"]["ig"]["steps"] = base["attributions"]["ig"]["steps"]
    assert prof == base


def test_override_text_as_papermill_passes_it():
    prof = profiles.load("smoke", '{"attributions": {"ig": {"steps": 9}}}')
    assert prof["attributions"]["ig"]["steps"] == 9


def test_unknown_key_names_the_known_ones():
    with pytest.raises(ValueError, match=r"'attributions.ig.stepz'.*known at this level:.*steps"):
        profiles.load("smoke", {"attributions": {"ig": {"stepz": 1}}})
    with pytest.raises(ValueError, match="must be a mapping"):
        profiles.load("smoke", "[1, 2]")


def test_set_assignments_parse_as_yaml_into_one_nested_dict():
    assert profiles.parse_set(["a.b.c=100", "a.b.d=0.5", "a.e=[1, 2]", "f=true"]) == {
        "a": {"b": {"c": 100, "d": 0.5}, "e": [1, 2]}, "f": True}
    with pytest.raises(ValueError, match="KEY.PATH=VALUE"):
        profiles.parse_set(["no_equals_sign"])


def test_training_knob_changes_the_model_hash_and_unknown_training_knob_is_refused():
    base = profiles.load("smoke")
    h0 = profiles.config_hash(profiles.model_config(base, "robust"))
    changed = profiles.load("smoke", {"models": {"robust": {"lr": 0.123}}})
    assert profiles.config_hash(profiles.model_config(changed, "robust")) != h0
    assert profiles.config_hash(profiles.model_config(changed, "standard")) == \
        profiles.config_hash(profiles.model_config(base, "standard"))
    with pytest.raises(ValueError, match=r"unknown setting 'train\.learning_rate'.*known at this level:.* lr,"):
        profiles.load("smoke", {"train": {"learning_rate": 0.1}})  # refused at load, by the schema
    bad = profiles.merge(base, {"train": {"learning_rate": 0.1}})  # a dict that bypassed load
    with pytest.raises(ValueError, match="unknown settings"):
        profiles.model_config(bad, "robust")


def test_context_applies_overrides(tmp_path):
    ctx = Context("smoke", "cpu", tmp_path / "r", tmp_path / "f", overrides='{"seed": 3}')
    assert ctx.profile["seed"] == 3 and "overrides" in repr(ctx)
