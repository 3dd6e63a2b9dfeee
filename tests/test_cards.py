import pytest

from gpo_bench.cards import MethodCard, TaskCard, apply_overrides, load_method_card, load_task_card
from gpo_bench.discovery import method_names, task_names
from gpo_bench.errors import CardError, UnknownNameError
from gpo_bench.registry import METHODS
from gpo_bench.runner import RunSpec


def test_every_shipped_card_loads_and_names_a_registered_implementation():
    assert {"opinionqa", "globalopinionqa", "synthetic"} <= set(task_names())
    for name in task_names():
        load_task_card(name)
    for name in method_names():
        METHODS.get(load_method_card(name).implementation)


def test_unknown_field_names_the_card_and_field(tmp_path):
    path = tmp_path / "mytask.yaml"
    path.write_text(
        "name: mytask\ndescription: x\nversion: 1\nloader: synthetic\nprotocol: opinion\nmetric: alignment\n"
        "shots: [0]\nshot: [1]\n"
    )
    with pytest.raises(CardError, match=r"mytask.yaml: unknown field 'shot'"):
        TaskCard.from_file(path)


def test_wrong_type_names_the_field(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: m\ndescription: x\nversion: one\nimplementation: uniform\n")
    with pytest.raises(CardError, match=r"m.yaml: field 'version' must be int, got str"):
        MethodCard.from_file(path)


def test_unknown_names_suggest_the_closest():
    with pytest.raises(UnknownNameError, match="Did you mean opinionqa"):
        load_task_card("opinonqa")
    with pytest.raises(UnknownNameError, match="Did you mean group-knn"):
        load_method_card("groupknn")


def test_unknown_setting_override_is_an_error():
    with pytest.raises(UnknownNameError, match="Did you mean max_steps"):
        RunSpec(task="synthetic", method="gpo", overrides={"max_step": 10}).resolved()


def test_a_setting_is_checked_against_what_its_method_declares(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: m\ndescription: x\nversion: 1\nimplementation: knn\nsettings: {neighbors: 0}\n")
    card = MethodCard.from_file(path)  # the schema alone: no method is imported to load a card
    limit = METHODS.get("knn").SETTINGS["neighbors"]
    with pytest.raises(CardError, match=rf"m.yaml: setting 'neighbors' must be {limit.describe()}, got int 0"):
        apply_overrides(card.settings, {}, card)
    path.write_text("name: m\ndescription: x\nversion: 1\nimplementation: knn\nsettings: {neighbors: 3}\n")
    card = MethodCard.from_file(path)
    with pytest.raises(CardError, match=r"--set neighbors='3'.*must be an integer"):
        apply_overrides(card.settings, {"neighbors": "3"}, card)
    assert apply_overrides(card.settings, {"neighbors": 5}, card) == {"neighbors": 5}


def test_every_built_in_card_sets_only_what_its_method_declares():
    for name in method_names():
        card = load_method_card(name)
        assert set(card.settings) <= set(METHODS.get(card.implementation).SETTINGS), name
        assert apply_overrides(card.settings, {}, card) == card.settings


def test_an_unknown_implementation_names_the_card(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("name: m\ndescription: x\nversion: 1\nimplementation: knnn\n")
    card = MethodCard.from_file(path)
    with pytest.raises(CardError, match=r"m.yaml: field 'implementation': unknown method implementation 'knnn'"):
        apply_overrides(card.settings, {}, card)
