"""The online decision against several candidate persons."""

from __future__ import annotations

from hub.mpi.compare import features
from hub.mpi.decide import decide, format_explanation
from hub.mpi.model import load_model
from tests.unit.test_mpi_compare import pt

HOME = {"line": "12 Elm Street", "postal": "60614", "phone": "212-555-0142"}


def test_links_to_the_matching_person_among_strangers():
    model = load_model()
    incoming = features(pt("Bill", "Quennell", "1980-04-12", nid="900-12-3456", **HOME))
    candidates = {
        "p1": [features(pt("William", "Quennell", "1980-04-12", nid="900-12-3456", **HOME))],
        "p2": [features(pt("Ottilie", "Abernathy", "1955-09-30"))],
    }
    d = decide(model, incoming, candidates)
    assert (d.band, d.person_id) == ("link", "p1")


def test_two_persons_above_the_link_threshold_go_to_review():
    model = load_model()
    incoming = features(pt("Wilbur", "Quennell", "1980-04-12", nid="900-12-3456", **HOME))
    same = [features(pt("Wilbur", "Quennell", "1980-04-12", nid="900-12-3456", **HOME))]
    d = decide(model, incoming, {"p1": same, "p2": same})
    assert d.band == "review" and d.others


def test_a_record_of_the_person_that_shares_the_national_id_speaks_for_it():
    """WILL, with his national id, at the address of WILLIAM's second record (which has no id): that
    record alone looks like his twin (a nickname, the same birth date, nothing personal to tell them
    apart); WILLIAM's first record has his national id, so the person is his. Without the id: review."""
    model = load_model()
    moved = {"line": "88 Harbor Way", "postal": "61761", "phone": "212-555-0177"}
    person = [features(pt("William", "Marrowfield", "1972-03-14", nid="900-11-0001", **HOME)),
              features(pt("William", "Marrowfield", "1972-03-14", **moved))]
    d = decide(model, features(pt("Will", "Marrowfield", "1972-03-14", nid="900-11-0001", **moved)), {"p1": person})
    assert (d.band, d.person_id, d.explanation.guards) == ("link", "p1", [])
    alone = decide(model, features(pt("Will", "Marrowfield", "1972-03-14", **moved)), {"p1": person})
    assert alone.band == "review" and "twin" in alone.explanation.guards


def test_no_candidates_is_a_new_person():
    d = decide(load_model(), features(pt()), {})
    assert d.band == "new" and d.person_id is None


def test_explanation_text_names_levels_and_guards():
    model = load_model()
    e = model.score(pt("Wilbur", dob="2011-04-12", **HOME), pt("Cyrus", dob="2011-04-12", **HOME))
    text = format_explanation(e)
    assert "birth_date" in text and "exact" in text and "twin" in text and "WILBUR" not in text.upper()
