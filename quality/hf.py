"""Importing ``transformers`` from inside a checkout.

The repository has a top-level folder named ``tokenizers`` (installed as ``trimodal.tokenizers``).
When Python runs from the repository root (``python -m pytest``, ``python -m trimodal.cli``),
the root is on ``sys.path`` and that folder would shadow Hugging Face's ``tokenizers``, which
``transformers`` imports. This imports both with the checkout's root left out of the path, once;
later imports find them in ``sys.modules``.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path
from types import ModuleType

_ROOT = Path(__file__).resolve().parent.parent


def _shadows(entry: str) -> bool:
    p = Path(entry or os.getcwd()).resolve()
    return p == _ROOT and (p / "tokenizers" / "codec.py").exists()


def transformers() -> ModuleType:
    if "transformers" in sys.modules:
        return sys.modules["transformers"]
    mod = sys.modules.get("tokenizers")
    if mod is not None and _shadows(str(Path(getattr(mod, "__file__", "") or ".").parent.parent)):
        del sys.modules["tokenizers"]
    saved = sys.path[:]
    sys.path[:] = [e for e in sys.path if not _shadows(e)]
    try:
        importlib.import_module("tokenizers")
        tf = importlib.import_module("transformers")
        tf.utils.logging.disable_progress_bar()  # a bar per weight load drowns the report
        return tf
    except ImportError as e:
        raise ImportError(f"this metric needs transformers (pip install 'trimodal[eval]'): {e}") from e
    finally:
        sys.path[:] = saved
