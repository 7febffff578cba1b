"""meal_pl/language.py: the English check and the stock-reply share, on the answers that prompted them."""

from meal_pl.language import is_english, repeat_share


def test_the_drift_seen_after_training_is_not_english_and_fluent_answers_are():
    # SmolLM2's answers after an over-strong warm start (issue: real language in the main command)
    assert not is_english("Aviso de parecería: vamos a habiler a ser un lado de llamar a las fotos de vamos a")
    assert not is_english("Startleen kann ich weißen, jeg nicht kann davon lernen, dass wir weißen")
    assert not is_english("Compound interest écrase une fois la forme de bonne excess.")
    assert is_english("To keep basil alive on a windowsill, follow these simple steps: water it when the soil is dry.")
    assert is_english("I'm not sure. I'm not sure.") and is_english("")


def test_repeat_share_is_the_most_frequent_answers_share():
    assert repeat_share(["I'm not sure.", "I'm  not sure.", "Yes.", "No."]) == 0.5
    assert repeat_share(["a", "b"]) == 0.5 and repeat_share([]) == 0.0
