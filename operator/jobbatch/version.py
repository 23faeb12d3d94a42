"""The operator's version (`jobbatch --version`, `jobbatch_build_info`, benchmark reports).

``jobbatch`` is a namespace package: this distribution (jobbatch-operator) and the worker SDK's
(jobbatch-worker, ``sdk/``) each ship a part of it, so neither may own ``jobbatch/__init__.py``.
"""

__version__ = "0.1.0"
