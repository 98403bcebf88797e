from __future__ import annotations

import pytest

from sonus.metrics.wer import error_rates


def test_corpus_level_rates():
    r = error_rates(["a b c d", "e f"], ["a x c d", "e"])
    assert r.wer == pytest.approx(2 / 6)
    assert r.words == 6
    assert error_rates(["abc"], ["abd"]).cer == pytest.approx(1 / 3)
    assert error_rates(["a b"], [""]).wer == 1.0


def test_bad_inputs():
    with pytest.raises(ValueError, match="2 references but 1"):
        error_rates(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="reference 1 is empty"):
        error_rates(["a", " "], ["a", "b"])
