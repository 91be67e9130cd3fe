import pytest

from braggtrack.config import FindConfig
from braggtrack.errors import OptionError


@pytest.mark.parametrize(
    "field,value",
    [("threshold", -1.0), ("min_score", 300), ("bin", 0), ("bin", 1.5), ("patch", 10),
     ("patch", 1), ("localizer", "magic"), ("edge", -1), ("min_distance", -2.0),
     ("centre_tolerance", float("nan")), ("max_peaks", 0), ("device", "tpu")],
)
def test_nonsense_options_are_refused_with_one_line(field, value):
    with pytest.raises(OptionError) as info:
        FindConfig(**{field: value})
    msg = str(info.value)
    assert "\n" not in msg and field.replace("_", "-") in msg


def test_replace_validates_again():
    cfg = FindConfig()
    assert cfg.replace(patch=15).patch == 15
    with pytest.raises(OptionError):
        cfg.replace(patch=14)


def test_defaults_round_trip_through_dict():
    cfg = FindConfig(localizer="gauss", bin=2)
    assert FindConfig(**cfg.to_dict()) == cfg
