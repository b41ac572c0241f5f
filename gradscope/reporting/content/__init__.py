"""What a report says, independent of how it is laid out.

:mod:`.document` (the document, its sections and panels), :mod:`.build` (records in, a
document out), the panels declared once each (:mod:`.panels`, :mod:`.gate_panels`,
:mod:`.shared`) and the numbers beside them (:mod:`.numbers`).
"""
