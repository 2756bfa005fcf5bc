"""fastmix.settings: the checks every setting's values go through."""
import pytest

from fastmix.settings import KINDS, Check, check_seed, choice


@pytest.mark.parametrize("kind", KINDS)
def test_every_kind_can_be_made(kind):
    Check(kind, ("a", "b") if kind == "choice" else ())


def test_an_unknown_kind_is_refused_when_made():
    # before: "positiv" fell through to the number checks and accepted 0 and negatives
    with pytest.raises(ValueError, match="kind must be one of"):
        Check("positiv")


def test_choices_only_with_kind_choice():
    with pytest.raises(ValueError, match="choices go with kind 'choice'"):
        Check("positive", ("a",))
    with pytest.raises(ValueError, match="choices go with kind 'choice'"):
        Check("choice")


@pytest.mark.parametrize("check, good, bad", [
    (Check("positive"), 0.5, 0.0),
    (Check("nonneg"), 0.0, -1e-9),
    (Check("optional_nonneg"), None, float("nan")),
    (Check("count"), 3, 0),
    (Check("bool"), False, 0),
    (Check("optional_bool"), None, "yes"),
    (choice("x", "y"), "y", "z"),
])
def test_checks_accept_and_refuse(check, good, bad):
    assert check("the_setting", good) == good
    with pytest.raises(ValueError, match="the_setting"):
        check("the_setting", bad)


def test_seed_range():
    assert check_seed("seed", 0) == 0
    for bad in (-1, 2**63, 1.5, True):
        with pytest.raises(ValueError, match="seed"):
            check_seed("seed", bad)
