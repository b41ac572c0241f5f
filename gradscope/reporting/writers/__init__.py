"""How a document is laid out: the HTML page and the PDF printed from it.

The page is :mod:`.html` (with :mod:`.sections`,
:mod:`.figure_html`, :mod:`.css` and the interactive figures of :mod:`.interactive`) and the
PDF printed from it (:mod:`.pdf`).
"""
