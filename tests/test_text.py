from core.text import count, score


def test_count_says_one_and_many():
    assert count(1, "image") == "1 image"
    assert count(0, "image") == "0 images"
    assert count(2500, "file") == "2,500 files"
    assert count(2, "family", "families") == "2 families" and count(1, "family", "families") == "1 family"


def test_score_rounds_and_says_when_there_is_none():
    assert score(0.9184592592592593) == "0.9185"
    assert score(1) == "1.0000" and score(0.5, 2) == "0.50"
    assert score(None) == "n/a"
