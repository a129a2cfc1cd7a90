"""Jinja templates of the retvlp model cards (rendered by `retvlp.model_card.render`)."""
