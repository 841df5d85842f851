"""Early stopping (train/early_stopping.py): patience, min_delta, and a score to maximise."""



from __future__ import annotations

from peftsum.train.early_stopping import EarlyStopping


def test_early_stopping_rules():
    s = EarlyStopping(patience=2, min_delta=0.1)
    assert s.update(5.0, 1, 1) and not s.should_stop
    assert not s.update(4.95, 2, 1) and not s.should_stop  # not better by more than min_delta
    assert s.update(4.5, 3, 2)  # resets the count
    assert not s.update(4.6, 4, 2) and not s.should_stop
    assert not s.update(4.7, 5, 3) and s.should_stop  # patience consecutive non-improvements
    assert s.best == 4.5 and s.best_step == 3 and s.best_epoch == 2
    assert s.seen(5) and not s.seen(6)
    never = EarlyStopping(patience=None)
    for step in range(10):
        never.update(1.0, step, 1)
    assert not never.should_stop


def test_early_stopping_on_a_score_keeps_the_highest():
    es = EarlyStopping(patience=2, maximize=True)
    assert es.update(10.0, 1, 1) and es.update(12.0, 2, 1)
    assert not es.update(11.0, 3, 1) and not es.should_stop
    assert not es.update(11.5, 4, 1) and es.should_stop
    assert (es.best_value, es.best_step) == (12.0, 2)
    loss = EarlyStopping(patience=None)
    loss.update(3.0, 1, 1)
    loss.update(2.5, 2, 1)
    assert (loss.best_value, loss.best_step) == (2.5, 2)
