import pytest

from ratelane import format_duration, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("12ms", 0.012),
        ("1ms", 0.001),
        ("120ms", 0.12),
        ("4m12.172s", 252.172),
        ("1h2m3.5s", 3723.5),
        ("23h47m36.648s", 23 * 3600 + 47 * 60 + 36.648),
        ("0", 0.0),
        ("0s", 0.0),
        ("64", 64.0),
        ("1.5", 1.5),
        ("250us", 0.00025),
        ("250µs", 0.00025),
        ("10ns", 1e-8),
        (" 2s ", 2.0),
    ],
)
def test_parse_duration_reads_go_style_and_plain_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "abc", "-1s", "1x", "s", "1s2", "1m 2s", "ms12"])
def test_parse_duration_rejects_garbage(text: str) -> None:
    assert parse_duration(text) is None


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-3, "0s"),
        (0.012, "12ms"),
        (0.0004, "0ms"),
        (0.9996, "1s"),
        (1, "1s"),
        (360, "6m0s"),
        (90.5, "1m30.5s"),
        (3723.5, "1h2m3.5s"),
        (252.172, "4m12.172s"),
        (3600, "1h0m0s"),
    ],
)
def test_format_duration_matches_openai(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text


@pytest.mark.parametrize("seconds", [0.001, 0.5, 1.25, 59.999, 61, 3599.5, 86000.123])
def test_format_then_parse_round_trips_to_the_millisecond(seconds: float) -> None:
    assert parse_duration(format_duration(seconds)) == pytest.approx(seconds, abs=5e-4)
