import pytest

from gpo_bench.cards import CardError, MethodCard, TaskCard, load_method_card, load_task_card, method_names, task_names
from gpo_bench.registry import METHODS, UnknownNameError
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
