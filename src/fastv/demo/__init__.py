"""`fastv demo`: the full model and FastV side by side in a local web page.

`logic` computes (the `Demo`: plain functions, unit-testable, no Gradio) from `settings` (the page's
knobs) and `uploads` (reading images and videos) into a `comparison` (what the page shows); `app`
lays the page out. Importing
this package does not import Gradio, so the library works without the `demo` extra.
"""

from fastv.demo.comparison import Comparison
from fastv.demo.logic import Demo
from fastv.demo.settings import Settings

__all__ = ["Comparison", "Demo", "Settings"]
