"""The cards of the built-in families, one module per family (`maskedclip.py`, ...): its architecture rows
(`architecture(config dict) -> [(row, text)]`) and its `register_card(...)` call
(`retvlp.model_card.architecture`).

Nothing lists these modules: `retvlp.model_card.architecture` imports every module of this package
(`pkgutil.iter_modules`, in name order) the first time the card registry is read. The template and citation
files a module names live in `retvlp/model_cards/`.
"""
