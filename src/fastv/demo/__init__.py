"""`fastv demo`: the full model and FastV side by side in a local web page.

`logic` computes (plain functions, unit-testable, no Gradio); `app` lays the page out. Importing
this package does not import Gradio, so the library works without the `demo` extra.
"""

from fastv.demo.logic import Comparison, Demo, Settings

__all__ = ["Comparison", "Demo", "Settings"]
