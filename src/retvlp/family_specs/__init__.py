"""The model facts of the built-in families, one module per family (`maskedclip.py`, ...), each calling
`retvlp.families.register_family(FamilySpec(...))`.

Nothing lists these modules: `retvlp.families` imports every module of this package (`pkgutil.iter_modules`,
in name order) the first time the registry is read. A new built-in family adds its module here; a family
defined outside the package calls `register_family` from its own code instead. The modules import nothing but
`retvlp.families` (classes are named by ``"module:attribute"`` strings, resolved on use), so reading the
registry imports no model code.
"""
